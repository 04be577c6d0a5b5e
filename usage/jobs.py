from celery.schedules import crontab

from core.jobs import scheduled_job
from usage.partitions import partitions_ensure


@scheduled_job(name="sync_info_partitions", schedule=crontab(hour="3", minute="10"), order=90)
def sync_info_partitions(*, now):
    """Create the missing Sync Info and snapshot partitions (tiers and blocks)."""
    return f"{partitions_ensure(now=now)} partition(s) created"
