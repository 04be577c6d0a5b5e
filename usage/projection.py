"""The projection of a usage month to its end: the transactions so far, plus the average of the
last 7 full days for the time left
(docs/architecture.md#decision-usage-is-projected-from-the-last-7-days).

One rule for every place that shows or acts on it (the Usage section, the Overview, the
upcoming invoice, the forecast alert), so they never disagree.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Sum

from usage.models import UsageCounter

WINDOW_DAYS = 7
DAY_SECONDS = 24 * 60 * 60


@dataclass(frozen=True)
class Projection:
    used: int  # this usage month so far
    daily_average: int  # transactions per day over the window, rounded
    window_days: int  # full days averaged: 7, fewer for a subscription younger than a week
    projected: int  # expected by the end of the usage month
    month_end: datetime

    def percent_of(self, limit: int) -> int:
        """Rounded down, like the alerts' comparisons."""
        if not limit:
            return 100 if self.projected else 0
        return self.projected * 100 // limit


def window(*, today: date, anchor_day: date) -> tuple[date, date]:
    """The full days the average covers, [first, today): the 7 days before today, none before
    the subscription's first day (a day before it had no usage to count)."""
    first = max(today - timedelta(days=WINDOW_DAYS), anchor_day)
    return first, today


def projection_make(
    *, used: int, window_total: int, window_days: int, month_end: datetime, now: datetime
) -> Projection | None:
    """`used` plus the window's daily average for the time left in the month (the rest of today
    included); None before a full day has passed, when there is nothing to average."""
    if window_days <= 0:
        return None
    average = window_total / window_days
    left = max((month_end - now).total_seconds(), 0) / DAY_SECONDS
    return Projection(
        used=used,
        daily_average=round(average),
        window_days=window_days,
        projected=used + round(average * left),
        month_end=month_end,
    )


# How far back usage_projection looks for the window's counters: two usage months at most.
PROJECTION_MONTHS_BACK = timedelta(days=40)


def usage_projection(
    *,
    organisation_id: int,
    anchor_at: datetime,
    zone,
    used: int,
    month_end: datetime,
    now: datetime,
    window_total: int | None = None,
) -> Projection | None:
    """The projection of the usage month ending at `month_end`: one query over the daily
    counters of the window (never Sync Info), none when the caller already summed them as
    of the same `now` (`window_total`, usage.selectors.UsageSummary)."""
    first, last = window(
        today=now.astimezone(zone).date(), anchor_day=anchor_at.astimezone(zone).date()
    )
    days = (last - first).days
    if days <= 0:
        return None
    total = window_total
    if total is None:
        total = (
            UsageCounter.objects.filter(
                organisation_id=organisation_id,
                # Two usage months at most; the bound keeps the index range short.
                month_start__gte=now - PROJECTION_MONTHS_BACK,
                day__gte=first,
                day__lt=last,
            ).aggregate(total=Sum("transactions"))["total"]
            or 0
        )
    return projection_make(
        used=used, window_total=total, window_days=days, month_end=month_end, now=now
    )
