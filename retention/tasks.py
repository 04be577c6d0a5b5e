from celery import shared_task
from django.utils import timezone

from retention.gdpr import deletion_request_execute


@shared_task(name="retention.execute_deletion_request", acks_late=True)
def execute_deletion_request(request_id: int) -> bool:
    """Loads the approved request by id and runs it (a no-op when it already ran)."""
    return deletion_request_execute(request_id=request_id, now=timezone.now()) is not None
