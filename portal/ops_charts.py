"""The ops dashboard's charts: server-rendered SVG bar charts of portal.ops_figures, drawn as the
usage chart is (x in percent of the width, y in px), each with a text legend and its data table
(docs/architecture.md#decision-the-ops-charts-and-the-finance-export).
"""

from dataclasses import dataclass
from datetime import datetime

from core.charts import axis_max, compact, px
from core.money import format_money
from portal import ops_figures
from portal.ops_figures import Month
from subscriptions.models import CancellationReason

HEIGHT = 176
TOP = 10
BOTTOM = 140
LABEL_Y = 160
GROUP_SHARE = 0.8  # of each month's slot; the rest is the gap between months
MIN_BAR = 2  # px: a small non-zero value still shows


@dataclass(frozen=True)
class Bar:
    x: str
    width: str
    y: str
    height: str
    css_class: str
    title: str


@dataclass(frozen=True)
class Tick:
    y: str
    label: str


@dataclass(frozen=True)
class Label:
    x: str
    text: str


@dataclass(frozen=True)
class Series:
    key: str
    name: str
    css_class: str


@dataclass(frozen=True)
class Row:
    month: str
    cells: list[str]


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    currency: str
    summary: str
    series: list[Series]
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[Label]
    rows: list[Row]
    height: int = HEIGHT
    baseline: int = BOTTOM
    label_y: int = LABEL_Y


def _pct(value: float) -> str:
    return f"{value:.3f}%"


def bar_chart(
    *,
    id: str,
    title: str,
    currency: str,
    months: list[Month],
    values: dict[str, list[int]],
    series: list[Series],
    money: bool,
    stacked: bool = False,
    total: bool = True,
) -> Chart:
    """Bars per month, side by side (or stacked) per series, on an axis from 0 to a round
    maximum; amounts in minor units when `money`."""

    def show(value: int) -> str:
        return format_money(value, currency) if money else f"{value:,}"

    def axis(value: int) -> str:
        return compact(value // 100) if money else compact(value)

    # The axis counts whole units of money so that its labels stay short ("2k", not "200k").
    unit = 100 if money else 1
    if stacked:
        highest = max(
            (sum(values[s.key][i] for s in series) for i in range(len(months))), default=0
        )
    else:
        highest = max((max(values[s.key]) for s in series), default=0)
    top = axis_max(-(-highest // unit)) * unit
    plot = BOTTOM - TOP
    slot = 100 / len(months)
    group = slot * GROUP_SHARE
    width = group if stacked else group / len(series)
    bars, labels, rows = [], [], []
    for index, month in enumerate(months):
        left = slot * index + (slot - group) / 2
        base = BOTTOM
        for position, item in enumerate(series):
            value = values[item.key][index]
            if value <= 0:
                continue
            height = max(value * plot / top, MIN_BAR)
            x = left if stacked else left + width * position
            y = base - height if stacked else BOTTOM - height
            if stacked:
                base -= height
            bars.append(
                Bar(
                    x=_pct(x),
                    width=_pct(width),
                    y=px(y),
                    height=px(height),
                    css_class=item.css_class,
                    title=f"{month.label}{' (so far)' if month.is_current else ''}: "
                    f"{item.name} {show(value)}",
                )
            )
        # Every month on a wide screen; CSS hides every other label on a phone.
        text = f"{month.start:%b}" if index and month.start.month != 1 else f"{month.start:%b %y}"
        labels.append(Label(x=_pct(slot * index + slot / 2), text=text))
        rows.append(
            Row(
                month=month.label + (" (so far)" if month.is_current else ""),
                cells=[show(values[s.key][index]) for s in series],
            )
        )
    ticks = [Tick(y=px(BOTTOM - v * plot / top), label=axis(v)) for v in (0, top // 2, top)]
    if total:
        summary = "; ".join(f"{s.name} {show(sum(values[s.key]))}" for s in series)
        summary = (
            f"{title} in {currency}, {months[0].label} to {months[-1].label}, in all: {summary}."
        )
    else:
        # A level, not a flow: its sum over months means nothing.
        first, last = values[series[0].key][0], values[series[0].key][-1]
        summary = (
            f"{title} in {currency}: {show(first)} in {months[0].label}, "
            f"{show(last)} in {months[-1].label}."
        )
    summary += " The data table lists every month."
    return Chart(
        id=id,
        title=title,
        currency=currency,
        summary=summary,
        series=series,
        bars=bars,
        ticks=ticks,
        labels=labels,
        rows=rows,
    )


MRR = [Series("mrr", "MRR", "ops-bar-1")]
MONEY = [
    Series("invoiced", "Invoiced", "ops-bar-1"),
    Series("collected", "Collected", "ops-bar-2"),
    Series("credited", "Credited", "ops-bar-3"),
]
FAILED = [
    Series("opened", "Opened", "ops-bar-1"),
    Series("recovered", "Recovered", "ops-bar-2"),
    Series("suspended", "Suspended", "ops-bar-3"),
    Series("written_off", "Written off", "ops-bar-4"),
]
CANCELLATIONS = [
    Series(value, label, f"ops-bar-{n}")
    for n, (value, label) in enumerate(CancellationReason.choices, start=1)
]
NEW = [Series("new", "New subscriptions", "ops-bar-1")]


@dataclass(frozen=True)
class Family:
    title: str
    description: str
    charts: list[Chart]


def ops_charts(*, now: datetime) -> dict:
    """The five chart families for the last twelve months, per currency (five queries)."""
    months = ops_figures.last_months(now=now)
    families = [
        (
            "mrr",
            "Monthly recurring revenue (MRR)",
            "Plan prices of the subscriptions running at each month's end (now for this month), "
            "annual plans as one twelfth, before tax.",
            ops_figures.mrr(months=months, now=now),
            MRR,
            True,
            False,
        ),
        (
            "money",
            "Invoiced, collected and credited",
            "Invoices issued (void ones left out), payments received and credit notes issued "
            "in each month, tax included.",
            ops_figures.money(months=months, now=now),
            MONEY,
            True,
            False,
        ),
        (
            "failed",
            "Failed payments",
            "Failed-payment cases opened and recovered, accounts suspended and invoices "
            "written off in each month.",
            ops_figures.failed_payments(months=months, now=now),
            FAILED,
            False,
            False,
        ),
        (
            "cancellations",
            "Cancellations by reason",
            "Subscriptions cancelled in each month, by the reason given.",
            ops_figures.cancellations(months=months, now=now),
            CANCELLATIONS,
            False,
            True,
        ),
        (
            "new",
            "New subscriptions",
            "Subscription terms started in each month (first invoice paid or owed).",
            ops_figures.new_subscriptions(months=months, now=now),
            NEW,
            False,
            False,
        ),
    ]
    result = []
    for key, title, description, figures, series, money, stacked in families:
        charts = [
            bar_chart(
                id=f"ops-chart-{key}-{currency.lower()}",
                title=title,
                currency=currency,
                months=months,
                values=figures[currency],
                series=series,
                money=money,
                stacked=stacked,
                total=key != "mrr",
            )
            for currency in sorted(figures)
        ]
        result.append(Family(title=title, description=description, charts=charts))
    return {
        "months": months,
        "period": f"{months[0].label} – {months[-1].label}",
        "families": result,
    }
