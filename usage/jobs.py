from celery.schedules import crontab

from core.jobs import scheduled_job
from usage.alerts import forecast_alerts_send
from usage.partitions import partitions_ensure


@scheduled_job(name="sync_info_partitions", schedule=crontab(hour="3", minute="10"), order=90)
def sync_info_partitions(*, now):
    """Create the missing Sync Info and snapshot partitions (tiers and blocks)."""
    return f"{partitions_ensure(now=now)} partition(s) created"


# Hourly rather than daily: the projection's window moves at midnight in each organisation's
# time zone (docs/architecture.md#usage-alerts).
@scheduled_job(name="forecast_alerts", schedule=crontab(minute="25"), order=95)
def forecast_alerts(*, now):
    """Email the forecast alerts due without a new batch (the 7-day window moved)."""
    return f"{forecast_alerts_send(now=now)} forecast alert(s) sent"
