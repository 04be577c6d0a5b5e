"""Usage history: the last usage months of a subscription, from the per-day usage counters.

Like the Usage section (usage.selectors), it never reads Sync Info: a month's figure is the sum
of at most 31 counter rows, found by the (organisation, month_start, day) index, so a page of
twelve months costs the same at ten thousand or ten million Sync Info rows
(docs/architecture.md#usage-history). What was billed for a month is billing's: the page that
shows it lives in billing, which adds it to these months (billing.usage_history).
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Sum

from core.charts import axis_max, compact, px
from subscriptions.models import PlanChange, Subscription
from usage.models import UsageCounter
from usage.months import usage_month
from usage.selectors import (
    CHART_BAR_SHARE,
    CHART_BOTTOM,
    CHART_HEIGHT,
    CHART_LABEL_Y,
    CHART_MIN_BAR,
    CHART_TOP,
    ChartLabel,
    ChartTick,
    DayUsage,
    UsageChart,
    _chart,
    _level,
    _percent,
    _percent_used,
)

HISTORY_MONTHS = 12
_INSTANT = timedelta(microseconds=1)


@dataclass(frozen=True)
class UsageMonth:
    start: datetime  # in the organisation's time zone
    end: datetime  # exclusive: the instant the next usage month starts
    transactions: int
    # The plan's limit when the month closed (docs/architecture.md#usage-history); for the
    # current month, the current plan's.
    limit: int
    is_current: bool  # the month containing `now`: its figures are "so far"

    @property
    def key(self) -> str:
        """The month in URLs: the local date it starts on, "2026-11-01"."""
        return self.start.date().isoformat()

    @property
    def start_text(self) -> str:
        """The start as the page prints it before the end ("j M Y"): "1 Nov", with the year
        only when the month ends in another one ("1 Dec 2025" – "1 Jan 2026")."""
        if self.start.year != self.end.year:
            return f"{self.start:%-d %b %Y}"
        return f"{self.start:%-d %b}"

    @property
    def last_day(self) -> date:
        return (self.end - _INSTANT).date()

    @property
    def percent(self) -> int:
        return _percent_used(used=self.transactions, limit=self.limit)

    @property
    def level(self) -> str:
        """ "ok", "warning" from 80%, "over" from 100%, as in the Usage section."""
        return _level(self.percent)


def history_month_bounds(
    *, subscription: Subscription, now: datetime, count: int = HISTORY_MONTHS
) -> list[tuple[datetime, datetime]]:
    """The [start, end) of the last `count` usage months, newest first: back from the month
    containing `now` (or the subscription's last instant, once it has ended) to the first one,
    which starts at the anchor. No query; the bounds are in the organisation's time zone."""
    zone = subscription.organisation.tzinfo
    at = now
    if subscription.ended_at is not None and subscription.ended_at <= now:
        at = subscription.ended_at - _INSTANT
    months = []
    while len(months) < count:
        start, end = usage_month(anchor=subscription.anchor_at, zone=zone, at=at)
        if months and start >= months[-1][0]:
            break  # usage_month answers the first month for any instant before the anchor
        months.append((start.astimezone(zone), end.astimezone(zone)))
        at = start - _INSTANT
    return months


def _limits(
    *, subscription: Subscription, bounds: list[tuple[datetime, datetime]]
) -> dict[datetime, int]:
    """Each month's limit: that of the plan in force when it closed. A month that closed before
    an applied plan change had the change's `from_plan`; later ones the current plan. One query.

    The billing run charges a closed month at the plan it finds then, and a downgrade applied at
    the renewal is closed at that instant (`closed_at` = the month's end), so this is also the
    limit its overage was (or will be) computed on."""
    oldest = bounds[-1][0]
    changes = list(
        PlanChange.objects.filter(
            subscription=subscription,
            status=PlanChange.Status.APPLIED,
            closed_at__gte=oldest,
        )
        .order_by("closed_at", "pk")
        .values_list("closed_at", "from_plan__monthly_transactions")
    )
    current = subscription.plan.monthly_transactions
    limits = {}
    for start, end in bounds:
        limits[start] = next((limit for closed, limit in changes if closed >= end), current)
    return limits


def usage_months(*, subscription: Subscription, now: datetime) -> list[UsageMonth]:
    """The last HISTORY_MONTHS usage months (fewer for a younger subscription), newest first,
    with their transactions and limits: two queries (the counters summed per month, the
    applied plan changes).

    Expects the subscription with its plan and its organisation already set."""
    bounds = history_month_bounds(subscription=subscription, now=now)
    starts = [start for start, _ in bounds]
    # The range as well as the list: with years of counters, Postgres can walk the
    # (organisation, month_start, day) index over the history's months only.
    totals = dict(
        UsageCounter.objects.filter(
            organisation_id=subscription.organisation_id,
            month_start__gte=starts[-1],
            month_start__lte=starts[0],
            month_start__in=starts,
        )
        .values("month_start")
        .annotate(total=Sum("transactions"))
        .values_list("month_start", "total")
        .order_by()
    )
    limits = _limits(subscription=subscription, bounds=bounds)
    return [
        UsageMonth(
            start=start,
            end=end,
            transactions=totals.get(start, 0),
            limit=limits[start],
            is_current=start <= now < end,
        )
        for start, end in bounds
    ]


def usage_month_days(*, month: UsageMonth, organisation_id: int, now: datetime) -> list[DayUsage]:
    """The days of one usage month with their transactions (one query), as the daily chart of
    the Usage section draws them (usage.selectors._chart)."""
    zone = month.start.tzinfo
    per_day = dict(
        UsageCounter.objects.filter(organisation_id=organisation_id, month_start=month.start)
        .values_list("day", "transactions")
        .order_by()
    )
    today = now.astimezone(zone).date()
    first, last = month.start.date(), month.last_day
    return [
        DayUsage(
            day=day,
            transactions=per_day.get(day, 0),
            is_today=day == today,
            is_future=day > today,
        )
        for day in (first + timedelta(days=n) for n in range((last - first).days + 1))
    ]


def daily_chart(days: list[DayUsage]) -> UsageChart:
    """The Usage section's daily chart, for any usage month."""
    return _chart(days)


# The monthly chart ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MonthBar:
    key: str
    transactions: int
    limit: int
    x: str  # percent of the width
    width: str  # percent of the width
    y: str  # px from the top
    height: str  # px
    css_class: str  # "usage-chart-bar", plus " is-over" above the limit, " is-today" if current
    title: str  # "1 Nov – 1 Dec 2026 (so far): 52,340 of 50,000 transactions (104%)"


@dataclass(frozen=True)
class LimitMark:
    """The limit across one month's slot: a step line, since a plan change moves it."""

    x1: str
    x2: str
    y: str


@dataclass(frozen=True)
class MonthlyChart:
    height: int
    baseline: int
    label_y: int
    bars: list[MonthBar]
    limits: list[LimitMark]
    ticks: list[ChartTick]
    labels: list[ChartLabel]


def _month_title(month: UsageMonth) -> str:
    so_far = " (so far)" if month.is_current else ""
    return (
        f"{month.start_text} – {month.end:%-d %b %Y}{so_far}: "
        f"{month.transactions:,} of {month.limit:,} transactions ({month.percent}%)"
    )


def monthly_chart(months: list[UsageMonth]) -> MonthlyChart:
    """Bars of `months` (given newest first, drawn oldest to newest, left to right) against
    each month's limit, in the geometry and classes of the daily chart."""
    ordered = months[::-1]
    top = axis_max(max((max(m.transactions, m.limit) for m in ordered), default=0), smallest=10)
    plot = CHART_BOTTOM - CHART_TOP
    slot = 100 / max(len(ordered), 1)
    every = 1 if len(ordered) <= 6 else 2  # labels never crowd a phone screen
    bars, limits, labels = [], [], []
    labelled_year = None
    for index, month in enumerate(ordered):
        height = round(month.transactions * plot / top, 2)
        if month.transactions and height < CHART_MIN_BAR:
            height = CHART_MIN_BAR
        css_class = "usage-chart-bar"
        if month.transactions > month.limit:
            css_class += " is-over"
        if month.is_current:
            css_class += " is-today"
        bars.append(
            MonthBar(
                key=month.key,
                transactions=month.transactions,
                limit=month.limit,
                x=_percent(slot * index + slot * (1 - CHART_BAR_SHARE) / 2),
                width=_percent(slot * CHART_BAR_SHARE),
                y=px(CHART_BOTTOM - height),
                height=px(height),
                css_class=css_class,
                title=_month_title(month),
            )
        )
        limits.append(
            LimitMark(
                x1=_percent(slot * index),
                x2=_percent(slot * (index + 1)),
                y=px(CHART_BOTTOM - month.limit * plot / top),
            )
        )
        # From the newest month back, so the current month always has its label.
        if (len(ordered) - 1 - index) % every == 0:
            # The year on the first label and wherever it changes: "Nov 25", "Dec", "Jan 26".
            year = month.start.year
            text = f"{month.start:%b}" if year == labelled_year else f"{month.start:%b %y}"
            labelled_year = year
            labels.append(ChartLabel(text=text, x=_percent(slot * index + slot / 2)))
    ticks = [
        ChartTick(value=value, label=compact(value), y=px(CHART_BOTTOM - value * plot / top))
        for value in (0, top // 2, top)
    ]
    return MonthlyChart(
        height=CHART_HEIGHT,
        baseline=CHART_BOTTOM,
        label_y=CHART_LABEL_Y,
        bars=bars,
        limits=limits,
        ticks=ticks,
        labels=labels,
    )
