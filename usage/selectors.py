"""Reads of the usage app, always scoped to one organisation.

The Usage section of Settings > Subscription (article section 11; usage and billing periods in
docs/architecture.md#usage) comes from the per-day usage counters and the alert rows, never
from Sync Info (`usage_syncinfo` may hold tens of millions of rows): the figures cost the same
whatever the volume. The Sync Info page reads its rows by keyset, one page at a time.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import Exists, OuterRef, Q, QuerySet, Sum
from django.http import Http404

from accounts.models import Organisation
from core.charts import axis_max, compact, px
from core.keyset import cursor_encode as keyset_cursor_encode
from subscriptions.models import BillingCycle, ProcessFlow, Subscription
from usage.alerts import FIXED_PERCENTS, MAX_CUSTOM
from usage.models import AlertSettings, AlertThreshold, ApiKey, SyncInfo, UsageAlert, UsageCounter
from usage.months import usage_month
from usage.overage import overage_amount, overage_units
from usage.projection import PROJECTION_MONTHS_BACK, Projection, projection_make, window
from usage.services import NEWEST

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
    kind: str = UsageAlert.Kind.THRESHOLD  # or FORECAST: the projection reached 100%


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
    # To the month's end at the last 7 days' average; None on a subscription's first day.
    projection: Projection | None = None
    # The instant the figures are as of, and the window's total over the counters
    # usage.projection.usage_projection sums: the upcoming invoice on the same page takes
    # both instead of reading the same counters again (billing.upcoming).
    as_of: datetime | None = None
    projection_window_total: int = 0

    @property
    def start_format(self) -> str:
        """The month's first day shows its year when the month ends in the next one
        ("1 Dec 2026 – 1 Jan 2027"); otherwise the end's year says it ("1 Nov – 1 Dec 2026")."""
        return "j M Y" if self.month_start.year != self.month_end.year else "j M"

    @property
    def projected_percent(self) -> int | None:
        return None if self.projection is None else self.projection.percent_of(self.limit)

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
    today = now.astimezone(zone).date()
    window_first, window_last = window(
        today=today, anchor_day=subscription.anchor_at.astimezone(zone).date()
    )
    # This month's days, and the projection's window (which may reach into the month before),
    # in one query.
    per_day = {}
    window_total = 0
    projection_window_total = 0
    for month_start, day, total in (
        UsageCounter.objects.filter(
            Q(month_start=start) | Q(day__gte=window_first, day__lt=window_last),
            organisation=organisation,
            month_start__gte=start - timedelta(days=40),
            month_start__lte=start,
        )
        .values("month_start", "day")
        .annotate(total=Sum("transactions"))
        .values_list("month_start", "day", "total")
        .order_by()
    ):
        if month_start == start:
            per_day[day] = total
        if window_first <= day < window_last:
            window_total += total
            if month_start >= now - PROJECTION_MONTHS_BACK:
                projection_window_total += total
    # The sum of the same rows month_usage() adds up (and the 80%/100% alerts compare).
    used = sum(per_day.values())
    alerts = [
        AlertSent(threshold=threshold, sent_at=sent_at.astimezone(zone), kind=kind)
        for threshold, sent_at, kind in UsageAlert.objects.filter(
            organisation=organisation, month_start=start
        )
        .order_by("sent_at", "threshold")
        .values_list("threshold", "sent_at", "kind")
    ]
    limit = subscription.plan.monthly_transactions
    percent = _percent_used(used=used, limit=limit)
    price = subscription.plan.price_for(subscription.currency)
    per_1000 = price.overage_per_1000 if price is not None else 0
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
        projection=projection_make(
            used=used,
            window_total=window_total,
            window_days=(window_last - window_first).days,
            month_end=end,
            now=now,
        ),
        as_of=now,
        projection_window_total=projection_window_total,
    )


# The daily chart ------------------------------------------------------------------------------


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
    top = axis_max(max((d.transactions for d in days), default=0), smallest=10)
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
                y=px(CHART_BOTTOM - height),
                height=px(height),
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
        ChartTick(value=value, label=compact(value), y=px(CHART_BOTTOM - value * plot / top))
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


# Sync Info ------------------------------------------------------------------------------------

PAGE_SIZE = 50


def sync_info_rows(
    *,
    organisation: Organisation,
    subscription: Subscription | None,
    now: datetime,
    flow: ProcessFlow | None = None,
    status: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[SyncInfo]:
    """The organisation's Sync Info rows within its retention (`_retained`), filtered by
    ProcessFlow, status and [start, end) when given; the columns the page shows."""
    queryset = SyncInfo.objects.filter(organisation=organisation).only(
        "id", "flow_id", "record_key", "status", "direction", "synced_at", "message"
    )
    queryset = _retained(queryset, subscription=subscription, now=now)
    if flow is not None:
        queryset = queryset.filter(flow=flow)
    if status:
        queryset = queryset.filter(status=status)
    if start is not None:
        queryset = queryset.filter(synced_at__gte=start)
    if end is not None:
        queryset = queryset.filter(synced_at__lt=end)
    return queryset


def cursor_encode(row: SyncInfo) -> str:
    """An opaque page position: the row's (synced_at, id), the sort key of the list."""
    return keyset_cursor_encode(row.synced_at, row.pk)


@dataclass
class Page:
    rows: list[SyncInfo]
    newer: str | None  # cursor of the page before (newer rows), or None on the first page
    older: str | None  # cursor of the page after (older rows), or None on the last page
    first: bool


def sync_info_page(queryset, *, before=None, after=None) -> Page:
    """One page of `queryset`, newest first, by keyset on (synced_at, id): no OFFSET and no
    COUNT, so any page costs what the first does (index organisation_id, synced_at, id)."""
    if after is not None:
        moment, pk = after
        rows = list(
            queryset.filter(synced_at__gte=moment)
            .filter(Q(synced_at__gt=moment) | Q(id__gt=pk))
            .order_by("synced_at", "id")[: PAGE_SIZE + 1]
        )
        more_newer = len(rows) > PAGE_SIZE
        if more_newer or len(rows) == PAGE_SIZE:
            rows = rows[:PAGE_SIZE][::-1]
            return Page(
                rows=rows,
                newer=cursor_encode(rows[0]) if more_newer else None,
                older=cursor_encode(rows[-1]),
                first=not more_newer,
            )
        # Fewer than a page above the cursor (rows purged, an old link): the newest page.
        return sync_info_page(queryset)
    if before is not None:
        moment, pk = before
        queryset = queryset.filter(synced_at__lte=moment).filter(
            Q(synced_at__lt=moment) | Q(id__lt=pk)
        )
    rows = list(queryset.order_by("-synced_at", "-id")[: PAGE_SIZE + 1])
    more_older = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return Page(
        rows=rows,
        newer=cursor_encode(rows[0]) if before is not None and rows else None,
        older=cursor_encode(rows[-1]) if more_older else None,
        first=before is None,
    )


def _retained(queryset, *, subscription, now: datetime):
    """`queryset` bounded by the synced_at a row of the organisation can have: not older than
    its plan's Sync Info retention (the purge deletes `synced_at < now - retention`, exactly;
    retention.purge) and not more than NEWEST ahead (the ingest refuses later times). Constant
    bounds let Postgres leave out of the plan every week block outside them, in every tier
    (usage.partitions): planning over all ~46 leaves cost more than running the query.

    Not restricted to the plan's tier: after an upgrade, a downgrade or a subscription started
    after ingesting, the organisation keeps rows in another tier until they expire, and they
    are still within its retention. Without a subscription there is no lower bound (its
    retention would cost a query over the plan catalogue)."""
    queryset = queryset.filter(synced_at__lte=now + NEWEST)
    if subscription is not None:
        days = subscription.plan.sync_info_retention_days
        queryset = queryset.filter(synced_at__gte=now - timedelta(days=days))
    return queryset


# API keys -------------------------------------------------------------------------------------


def api_key_list(*, organisation: Organisation) -> QuerySet[ApiKey]:
    """The organisation's keys, live ones first, newest first."""
    return (
        ApiKey.objects.filter(organisation=organisation)
        .select_related("created_by")
        .order_by("revoked_at", "-created_at", "-pk")
    )


def api_key_get(*, organisation, key_id: int) -> ApiKey:
    """One of the organisation's keys; another organisation's key is a 404, like no key."""
    key = (
        ApiKey.objects.select_related("environment")
        .filter(organisation=organisation, pk=key_id)
        .first()
    )
    if key is None:
        raise Http404("No such API key in this organisation.")
    return key


# Usage alerts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertChoices:
    """What an organisation chose (docs/architecture.md#usage-alerts): its own thresholds
    (rows, for the Remove buttons) and whether the forecast alert is on."""

    custom: list[AlertThreshold]
    forecast: bool

    @property
    def percents(self) -> list[int]:
        """Every threshold that alerts, the fixed 80% and 100% included, lowest first."""
        return sorted([*FIXED_PERCENTS, *(threshold.percent for threshold in self.custom)])

    @property
    def count(self) -> int:
        return len(FIXED_PERCENTS) + len(self.custom)

    @property
    def can_add(self) -> bool:
        return len(self.custom) < MAX_CUSTOM


def alert_choices(*, organisation: Organisation) -> AlertChoices:
    """The organisation's thresholds, lowest first, and its forecast opt-in: two queries."""
    return AlertChoices(
        custom=list(
            AlertThreshold.objects.filter(organisation=organisation)
            .select_related("created_by")
            .order_by("percent")
        ),
        forecast=AlertSettings.objects.filter(organisation=organisation, forecast=True).exists(),
    )


@dataclass(frozen=True)
class AlertPercents:
    """What the Usage section of Settings > Subscription lists of an organisation's alert
    choices: every threshold that alerts and the forecast opt-in (no rows to remove)."""

    percents: list[int]
    forecast: bool


def alert_percents(*, organisation: Organisation) -> AlertPercents:
    """The thresholds that alert, the fixed 80% and 100% included, lowest first, and the
    forecast opt-in: alert_choices' figures in one query."""
    found = (
        Organisation.objects.filter(pk=organisation.pk)
        .values(
            custom=ArraySubquery(
                AlertThreshold.objects.filter(organisation=OuterRef("pk")).values("percent")
            ),
            forecast=Exists(
                AlertSettings.objects.filter(organisation=OuterRef("pk"), forecast=True)
            ),
        )
        .get()
    )
    return AlertPercents(
        percents=sorted([*FIXED_PERCENTS, *found["custom"]]), forecast=found["forecast"]
    )


def alert_threshold_get(*, organisation: Organisation, public_id) -> AlertThreshold:
    """One of the organisation's thresholds; another organisation's is a 404, like none."""
    threshold = AlertThreshold.objects.filter(
        organisation=organisation, public_id=public_id
    ).first()
    if threshold is None:
        raise Http404("No such usage alert in this organisation.")
    return threshold


def alerts_sent_now(
    *, organisation: Organisation, now: datetime
) -> dict[tuple[str, int], datetime]:
    """When each alert of the usage month holding `now` was sent, by (kind, threshold)."""
    return {
        (kind, threshold): sent_at
        for kind, threshold, sent_at in UsageAlert.objects.filter(
            organisation=organisation, month_start__lte=now, month_end__gt=now
        ).values_list("kind", "threshold", "sent_at")
    }
