"""The Celery app. Beat's schedule is built from the one job registry (core.jobs)."""

import os

from celery import Celery, signals

from core import observability

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")

app = Celery("billing_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_registered_jobs(sender, **kwargs):
    from core.jobs import all_jobs
    from core.tasks import run_scheduled_job

    for job in all_jobs():
        sender.add_periodic_task(job.schedule, run_scheduled_job.s(job.name), name=job.name)


@signals.setup_logging.connect
def _log_like_the_web(**kwargs):
    """Workers and beat log through settings.LOGGING (JSON lines in production), not Celery's
    own format; connecting this receiver is what stops Celery from replacing it. The level
    comes from LOG_LEVEL, so `celery worker -l` has no effect."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)


# Every log line of a task carries its task id; a failed task is logged with its organisation
# and invoice (core/observability.py). weak=False: module functions, kept for good.
signals.task_prerun.connect(observability.task_prerun, weak=False)
signals.task_postrun.connect(observability.task_postrun, weak=False)
signals.task_failure.connect(observability.task_failure, weak=False)
