"""Reads for the Usage section of Settings > Subscription (article section 11; DESIGN.md
section 2, Usage and Billing periods).

Everything comes from the per-day usage counters and the alert rows, never from Sync Info
(`usage_syncinfo` may hold tens of millions of rows): the figures cost the same whatever the
volume.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Sum

from subscriptions.models import BillingCycle, Subscription
from usage.models import UsageAlert, UsageCounter
from usage.months import usage_month
from usage.overage import overage_amount, overage_units

WARNING_PERCENT = 80
OVER_PERCENT = 100

# The daily chart: a fixed pixel height (labels stay readable at any width), bars placed in
# percentages of the width so the same markup fits a phone and a desktop.
CHART_HEIGHT = 168
CHART_TOP = 12
CHART_BOTTOM = 140
CHART_LABEL_Y = 160
CHART_BAR_SHARE = 0.72  # of each day's slot; the rest is the gap between bars
CHART_MIN_BAR = 2  # px: a day with a few transactions still shows a bar


@dataclass(frozen=True)
class DayUsage:
    day: date
    transactions: int
    is_today: bool
    is_future: bool


@dataclass(frozen=True)
class AlertSent:
    threshold: int
    sent_at: datetime


@dataclass(frozen=True)
class ChartBar:
    day: date
    transactions: int
    x: str  # percent of the width
    width: str  # percent of the width
    y: str  # px from the top
    height: str  # px
    is_today: bool
    is_future: bool
    # Display strings, made here once rather than by filters for each of ~31 bars per page.
    css_class: str  # "usage-chart-bar", plus " is-today" or " is-future"
    iso_day: str  # "2026-11-12"
    title: str  # "Thu 12 Nov (today): 1,040 transactions"


@dataclass(frozen=True)
class ChartTick:
    value: int
    label: str
    y: str


@dataclass(frozen=True)
class ChartLabel:
    text: str
    x: str  # percent of the width, the middle of the day's slot


@dataclass(frozen=True)
class UsageChart:
    height: int
    baseline: int
    label_y: int
    bars: list[ChartBar]
    ticks: list[ChartTick]
    labels: list[ChartLabel]


@dataclass(frozen=True)
class UsageSummary:
    month_start: datetime  # in the organisation's time zone
    month_end: datetime  # exclusive: the instant the next usage month starts
    days_left: int  # whole calendar days until month_end's date; 0 on the reset day
    used: int
    limit: int
    percent: int  # rounded down, so "80%" means the 80% alert has been sent; may exceed 100
    level: str  # "ok" below 80%, "warning" from 80%, "over" from 100%
    currency: str
    overage_per_1000: int  # minor units
    overage_units: int  # started thousands above the limit
    overage_amount: int  # minor units, what the next invoice will charge for this month so far
    annual: bool  # annual plans get an overage-only invoice at the close of the usage month
    days: list[DayUsage]
    alerts: list[AlertSent]

    @property
    def bar_max(self) -> int:
        return max(self.limit, 1)

    @property
    def bar_value(self) -> int:
        """The progress bar's value: never beyond its maximum (the text says the rest)."""
        return min(self.used, self.bar_max)

    @property
    def near_limit(self) -> bool:
        return self.percent >= WARNING_PERCENT

    @property
    def chart(self) -> UsageChart:
        return _chart(self.days)


def _percent_used(*, used: int, limit: int) -> int:
    """Rounded down, like the alerts' `used * 100 >= limit * threshold`: 80% shows only once
    the 80% alert is due. A plan without transactions is over at the first one."""
    if not limit:
        return OVER_PERCENT if used else 0
    return used * 100 // limit


def _level(percent: int) -> str:
    if percent >= OVER_PERCENT:
        return "over"
    if percent >= WARNING_PERCENT:
        return "warning"
    return "ok"


def usage_summary(*, subscription: Subscription, now: datetime) -> UsageSummary:
    """This usage month's transactions against the plan's limit, the overage so far, the daily
    series and the alerts sent: two queries (the counters grouped by day, the alerts).

    Expects the subscription as `subscriptions.selectors.subscription_for` loads it (plan and
    prices) with its organisation already set; otherwise each is one more query.
    """
    organisation = subscription.organisation
    zone = organisation.tzinfo
    start, end = usage_month(anchor=subscription.anchor_at, zone=zone, at=now)
    start, end = start.astimezone(zone), end.astimezone(zone)
    per_day = dict(
        UsageCounter.objects.filter(organisation=organisation, month_start=start)
        .values("day")
        .annotate(total=Sum("transactions"))
        .values_list("day", "total")
        .order_by()
    )
    # The sum of the same rows month_usage() adds up (and the 80%/100% alerts compare).
    used = sum(per_day.values())
    alerts = [
        AlertSent(threshold=threshold, sent_at=sent_at.astimezone(zone))
        for threshold, sent_at in UsageAlert.objects.filter(
            organisation=organisation, month_start=start
        )
        .order_by("threshold")
        .values_list("threshold", "sent_at")
    ]
    limit = subscription.plan.monthly_transactions
    percent = _percent_used(used=used, limit=limit)
    price = subscription.plan.price_for(subscription.currency)
    per_1000 = price.overage_per_1000 if price is not None else 0
    today = now.astimezone(zone).date()
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    calendar = [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
    days = [
        DayUsage(
            day=day,
            transactions=per_day.get(day, 0),
            is_today=day == today,
            is_future=day > today,
        )
        for day in calendar
    ]
    return UsageSummary(
        month_start=start,
        month_end=end,
        days_left=max((end.date() - today).days, 0),
        used=used,
        limit=limit,
        percent=percent,
        level=_level(percent),
        currency=subscription.currency,
        overage_per_1000=per_1000,
        overage_units=overage_units(used=used, limit=limit),
        overage_amount=overage_amount(used=used, limit=limit, price_per_1000=per_1000),
        annual=subscription.billing_cycle == BillingCycle.ANNUAL,
        days=days,
        alerts=alerts,
    )


# The daily chart ------------------------------------------------------------------------------


def _axis_max(highest: int) -> int:
    """The smallest of 10, 20, 50, 100, 200, 500, ... at or above the busiest day."""
    scale = 10
    while True:
        for step in (1, 2, 5):
            if highest <= step * scale:
                return step * scale
        scale *= 10


def _compact(value: int) -> str:
    """Axis labels: 500, 2.5k, 40k, 1.5M."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return str(value)


def _px(value: float) -> str:
    # Strings, so the template never localises a number inside SVG geometry.
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _percent(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") + "%"


def _bar_class(day: DayUsage) -> str:
    if day.is_today:
        return "usage-chart-bar is-today"
    if day.is_future:
        return "usage-chart-bar is-future"
    return "usage-chart-bar"


def _bar_title(day: DayUsage) -> str:
    """What the `date:"D j M"`, `thousands` and `pluralize` filters made of a bar: "Sun 1 Nov:
    3 transactions", with " (today)" after today's date."""
    today = " (today)" if day.is_today else ""
    plural = "" if day.transactions == 1 else "s"
    return f"{day.day:%a %-d %b}{today}: {day.transactions:,} transaction{plural}"


def _chart(days: list[DayUsage]) -> UsageChart:
    top = _axis_max(max((d.transactions for d in days), default=0))
    plot = CHART_BOTTOM - CHART_TOP
    slot = 100 / max(len(days), 1)
    bars = []
    labels = []
    for index, day in enumerate(days):
        height = round(day.transactions * plot / top, 2)
        if day.transactions and height < CHART_MIN_BAR:
            height = CHART_MIN_BAR
        bars.append(
            ChartBar(
                day=day.day,
                transactions=day.transactions,
                x=_percent(slot * index + slot * (1 - CHART_BAR_SHARE) / 2),
                width=_percent(slot * CHART_BAR_SHARE),
                y=_px(CHART_BOTTOM - height),
                height=_px(height),
                is_today=day.is_today,
                is_future=day.is_future,
                css_class=_bar_class(day),
                iso_day=day.day.isoformat(),
                title=_bar_title(day),
            )
        )
        # A label on the first day and then once a week, so they never crowd a phone screen.
        if index % 7 == 0:
            text = day.day.strftime("%-d %b") if index == 0 else day.day.strftime("%-d")
            if index and day.day.day < days[index - 7].day.day:
                text = day.day.strftime("%-d %b")  # a new calendar month starts in between
            labels.append(ChartLabel(text=text, x=_percent(slot * index + slot / 2)))
    ticks = [
        ChartTick(value=value, label=_compact(value), y=_px(CHART_BOTTOM - value * plot / top))
        for value in (0, top // 2, top)
    ]
    return UsageChart(
        height=CHART_HEIGHT,
        baseline=CHART_BOTTOM,
        label_y=CHART_LABEL_Y,
        bars=bars,
        ticks=ticks,
        labels=labels,
    )
