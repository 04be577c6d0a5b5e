from celery import shared_task
from django.utils import timezone

from core.jobs import run_job


@shared_task(name="billing_portal.run_scheduled_job")
def run_scheduled_job(name: str) -> str | None:
    """Celery beat's entry point: run one registered job as of now."""
    return run_job(name, now=timezone.now())
