from celery.schedules import crontab

from core.jobs import scheduled_job
from subscriptions.cancellation import subscriptions_end_cancelled


# Before the billing run (order 10): a subscription cancelled for this period end ends first,
# and the billing run skips cancelled subscriptions anyway, so it is never invoiced again.
@scheduled_job(name="end_cancelled_subscriptions", schedule=crontab(minute="*/15"), order=5)
def end_cancelled_subscriptions(*, now):
    """End the subscriptions cancelled at a period end that has passed."""
    return f"{subscriptions_end_cancelled(now=now)} cancelled subscription(s) ended"
