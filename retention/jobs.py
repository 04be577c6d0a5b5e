from datetime import timedelta

from celery.schedules import crontab

from core.jobs import scheduled_job
from retention.deletion import cancelled_organisations_delete, data_deletion_reminders_send
from retention.gdpr import deletion_requests_execute_stuck
from retention.purge import retention_purge, summary


@scheduled_job(name="retention_purge", schedule=crontab(hour="2", minute="30"), order=80)
def retention_purge_job(*, now):
    """Delete Sync Info and snapshots older than the plan's retention."""
    return summary(retention_purge(now=now))


# After the purge's hour-of-day jobs (order 80): reminders first, so a reminder due in the same
# run as nothing else still goes; then the deletions 30 days after a subscription ended.
@scheduled_job(name="delete_cancelled_organisations", schedule=crontab(minute="20"), order=85)
def delete_cancelled_organisations(*, now):
    """Deletion reminders, then delete organisations 30 days after their subscription ended."""
    reminders = data_deletion_reminders_send(now=now)
    deleted = cancelled_organisations_delete(now=now)
    return f"{reminders} deletion reminder(s) queued, {deleted} organisation(s) deleted"


# GDPR deletion requests approved while the broker was down: the approval's task never ran.
@scheduled_job(name="gdpr_deletion_requests_catch_up", schedule=crontab(minute="*/15"), order=90)
def gdpr_deletion_requests_catch_up(*, now):
    """Run approved GDPR deletion requests whose task never ran."""
    done = deletion_requests_execute_stuck(now=now, older_than=timedelta(minutes=10))
    return f"{done} GDPR deletion request(s) executed"
