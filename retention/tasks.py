from celery import shared_task
from django.utils import timezone

from core.observability import register_task_ids
from retention.gdpr import deletion_request_execute
from retention.models import DataDeletionRequest


@shared_task(name="retention.execute_deletion_request", acks_late=True)
def execute_deletion_request(request_id: int) -> bool:
    """Loads the approved request by id and runs it (a no-op when it already ran)."""
    return deletion_request_execute(request_id=request_id, now=timezone.now()) is not None


def _deletion_request_ids(request_id) -> dict:
    organisation = (
        DataDeletionRequest.objects.filter(pk=request_id)
        .values_list("organisation", flat=True)
        .first()
    )
    return {"organisation_id": organisation}


register_task_ids("retention.execute_deletion_request", _deletion_request_ids)
