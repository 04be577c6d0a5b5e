from celery import shared_task
from django.utils import timezone

from accounts.emails import email_deliver


@shared_task(name="accounts.deliver_email", acks_late=True)
def deliver_email(email_id: int) -> bool:
    return email_deliver(email_id=email_id, now=timezone.now())
