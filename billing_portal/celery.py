"""The Celery app. Beat's schedule is built from the one job registry (billing_portal.jobs)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")

app = Celery("billing_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_registered_jobs(sender, **kwargs):
    from billing_portal.jobs import all_jobs
    from billing_portal.tasks import run_scheduled_job

    for job in all_jobs():
        sender.add_periodic_task(job.schedule, run_scheduled_job.s(job.name), name=job.name)
