"""Anniversary billing periods.

The k-th period starts k months (or years) after the anchor, computed in the organisation's
time zone so a period that starts on the 31st ends on the last day of shorter months and
comes back to the 31st after, and daylight-saving changes do not move the hour.
"""

from datetime import datetime
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta

from subscriptions.models import BillingCycle


def period_start(*, anchor: datetime, cycle: str, index: int, zone: ZoneInfo) -> datetime:
    local = anchor.astimezone(zone)
    step = (
        relativedelta(years=index) if cycle == BillingCycle.ANNUAL else relativedelta(months=index)
    )
    shifted = (local.replace(tzinfo=None) + step).replace(tzinfo=zone)
    return shifted.astimezone(anchor.tzinfo)


def period_bounds(
    *, anchor: datetime, cycle: str, index: int, zone: ZoneInfo
) -> tuple[datetime, datetime]:
    return (
        period_start(anchor=anchor, cycle=cycle, index=index, zone=zone),
        period_start(anchor=anchor, cycle=cycle, index=index + 1, zone=zone),
    )
