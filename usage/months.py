"""Usage months: the transaction limit is per usage month,
the billing period for monthly plans and each monthly slice of the term for annual plans; both
are the months counted from the subscription's anchor in the organisation's time zone."""

from datetime import datetime
from zoneinfo import ZoneInfo

from subscriptions.models import BillingCycle, Subscription
from subscriptions.periods import period_start


def usage_month(*, anchor: datetime, zone: ZoneInfo, at: datetime) -> tuple[datetime, datetime]:
    """The usage month [start, end) containing `at` (the first one for instants before anchor)."""
    local_anchor = anchor.astimezone(zone)
    local_at = at.astimezone(zone)
    months = (local_at.year - local_anchor.year) * 12 + (local_at.month - local_anchor.month)
    index = max(months, 0)
    start = period_start(anchor=anchor, cycle=BillingCycle.MONTHLY, index=index, zone=zone)
    if start > at and index > 0:
        index -= 1
        start = period_start(anchor=anchor, cycle=BillingCycle.MONTHLY, index=index, zone=zone)
    end = period_start(anchor=anchor, cycle=BillingCycle.MONTHLY, index=index + 1, zone=zone)
    return start, end


def usage_month_of(subscription: Subscription, at: datetime) -> tuple[datetime, datetime]:
    return usage_month(anchor=subscription.anchor_at, zone=subscription.organisation.tzinfo, at=at)
