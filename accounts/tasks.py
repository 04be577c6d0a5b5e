from celery import shared_task
from django.utils import timezone

from accounts.delivery import email_deliver
from accounts.models import OutgoingEmail
from core.observability import register_task_ids

# The name as a string: reading `.name` off the task would finalise the Celery app mid-import.
DELIVER_EMAIL = "accounts.deliver_email"


@shared_task(name=DELIVER_EMAIL, acks_late=True)
def deliver_email(email_id: int) -> bool:
    return email_deliver(email_id=email_id, now=timezone.now())


def _email_ids(email_id) -> dict:
    organisation = (
        OutgoingEmail.objects.filter(pk=email_id).values_list("organisation", flat=True).first()
    )
    return {"organisation_id": organisation}


register_task_ids(DELIVER_EMAIL, _email_ids)
