from celery import shared_task
from django.utils import timezone

from core.observability import register_task_ids
from retention.gdpr import deletion_request_execute
from retention.models import DataDeletionRequest

# The name as a string: reading `.name` off the task would finalise the Celery app mid-import.
EXECUTE_DELETION_REQUEST = "retention.execute_deletion_request"


@shared_task(name=EXECUTE_DELETION_REQUEST, acks_late=True)
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


register_task_ids(EXECUTE_DELETION_REQUEST, _deletion_request_ids)
