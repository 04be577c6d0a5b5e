"""The ops dashboard's monthly figures: the last twelve calendar months (UTC), per currency
(docs/architecture.md#decision-the-ops-charts-and-the-finance-export).

One aggregate query per chart family, grouped by month and currency, so the number of queries
never depends on how many organisations there are.
The rules (what MRR counts, when money counts as collected, ...) are written down in the
decision; billing.finance_export lists the same invoices and credit notes a month at a time.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection

from billing.dunning import RUNNING
from billing.models import DunningCase, DunningStep, Invoice, InvoiceLine, Payment
from core.calendar_months import month_start, months_after
from core.money import round_half_up
from subscriptions.models import BillingCycle, CancellationReason, Subscription

MONTHS = 12


@dataclass(frozen=True)
class Month:
    start: datetime
    end: datetime  # the next month's first instant
    is_current: bool

    @property
    def label(self) -> str:
        return f"{self.start:%b %Y}"


def last_months(*, now: datetime, count: int = MONTHS) -> list[Month]:
    """The `count` calendar months (UTC) up to and including now's, oldest first."""
    current = month_start(now)
    starts = [months_after(current, offset) for offset in range(1 - count, 1)]
    return [Month(start=s, end=months_after(s, 1), is_current=s == current) for s in starts]


# Figures: {currency: {series: [value per month, oldest first]}} ----------------------------

Figures = dict[str, dict[str, list[int]]]


def _collect(rows, months: list[Month], series: list[str]) -> Figures:
    """Rows of (month index, currency, series, value) as one list per currency and series, a
    month without a row being 0."""
    figures: Figures = defaultdict(lambda: {name: [0] * len(months) for name in series})
    for index, currency, name, value in rows:
        figures[currency][name][index] = int(value)
    return dict(figures)


def _query(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _params(months: list[Month], now: datetime) -> dict:
    """The months' bounds: the first's start, the last's end, the first as a month number
    (year * 12 + month), and the instant each month's MRR is taken at (its last instant: the
    next month's start, or now for this month); and the codes the queries use."""
    return {
        "at": [min(m.end, now) for m in months],
        "now": now,
        "last_index": len(months) - 1,
        "first": months[0].start,
        "last": months[-1].end,
        "base": months[0].start.year * 12 + months[0].start.month,
        "paid": Invoice.Status.PAID,
        "open": Invoice.Status.OPEN,
        "void": Invoice.Status.VOID,
        "uncollectible": Invoice.Status.UNCOLLECTIBLE,
        "incomplete": Subscription.Status.INCOMPLETE,
        "ended": Subscription.Status.ENDED,
        "period": Invoice.Kind.SUBSCRIPTION,
        "plan": InvoiceLine.Kind.PLAN,
        "monthly": BillingCycle.MONTHLY,
        "annual": BillingCycle.ANNUAL,
        "succeeded": Payment.Status.SUCCEEDED,
        "charged_back": Payment.Status.CHARGED_BACK,
        "resolved": DunningCase.Status.RESOLVED,
        "day_14": DunningStep.Step.DAY_14,
        "running": RUNNING,
        "other": CancellationReason.OTHER,
    }


# The queries of things that happen at an instant (an invoice issued, a case opened) read each
# row once: {month_of_x} is the month of the row's instant x as an index of `months` (0 the
# oldest), from its UTC year and month; {in_x} keeps the rows whose x is in [first, last).
_MONTH = (
    "(extract(year FROM {at} AT TIME ZONE 'UTC')::int * 12"
    " + extract(month FROM {at} AT TIME ZONE 'UTC')::int - %(base)s)"
)
_IN_MONTHS = "{at} >= %(first)s AND {at} < %(last)s"


def _in_months(sql: str, **instants: str) -> str:
    """`sql` with {month_of_x} and {in_x} filled in for each instant column x."""
    fill = {}
    for name, column in instants.items():
        fill[f"month_of_{name}"] = _MONTH.format(at=column)
        fill[f"in_{name}"] = _IN_MONTHS.format(at=column)
    return sql.format(**fill)


# A period invoice counts when paid, or still owed by a subscription that had started (a first
# invoice waiting while the subscription is incomplete is a checkout, not a customer yet).
# Each plan line is tried against the months whose MRR instant may fall in its period (from
# its start's month to its end's: two for a monthly period), not against all twelve.
_MRR_INSTANT = "(%(at)s::timestamptz[])[k + 1]"
_MRR = """
SELECT k, i.currency,
       sum(l.amount) FILTER (WHERE i.billing_cycle = %(monthly)s),
       sum(l.amount) FILTER (WHERE i.billing_cycle = %(annual)s)
FROM billing_invoiceline l
JOIN billing_invoice i ON i.id = l.invoice_id
JOIN subscriptions_subscription s ON s.id = i.subscription_id
CROSS JOIN LATERAL generate_series(
  greatest(0, {month_of_start}), least(%(last_index)s, {month_of_end})) k
WHERE l.kind = %(plan)s AND i.kind = %(period)s
  AND l.period_end > %(first)s AND l.period_start < %(now)s
  AND (i.status = %(paid)s OR (i.status = %(open)s AND s.status <> %(incomplete)s))
  AND l.period_start < {at} AND l.period_end >= {at}
  AND NOT (s.status = %(ended)s AND s.ended_at < {at})
GROUP BY k, i.currency
""".format(
    month_of_start=_MONTH.format(at="l.period_start"),
    month_of_end=_MONTH.format(at="l.period_end"),
    at=_MRR_INSTANT,
)


def mrr(*, months: list[Month], now: datetime) -> Figures:
    """MRR per month: the plan line of every period invoice that counts and whose period holds
    the month's last instant (now for this month), an annual plan as one twelfth; a subscription
    that ended before that instant counts no more. Rounded half up per month and currency."""
    rows = _query(_MRR, _params(months, now))
    return _collect(
        (
            (index, currency, "mrr", (monthly or 0) + round_half_up(Decimal(annual or 0) / 12))
            for index, currency, monthly, annual in rows
        ),
        months,
        ["mrr"],
    )


MONEY_SERIES = ["invoiced", "collected", "credited"]

_MONEY = _in_months(
    """
SELECT {month_of_issued}, i.currency, 'invoiced', sum(i.total)
FROM billing_invoice i
WHERE {in_issued} AND i.status <> %(void)s
GROUP BY 1, 2
UNION ALL
SELECT {month_of_completed}, p.currency, 'collected', sum(p.amount)
FROM billing_payment p
WHERE {in_completed} AND p.status IN (%(succeeded)s, %(charged_back)s)
GROUP BY 1, 2
UNION ALL
SELECT {month_of_credited}, c.currency, 'credited', sum(c.total)
FROM billing_creditnote c
WHERE {in_credited}
GROUP BY 1, 2
""",
    issued="i.issued_at",
    completed="coalesce(p.completed_at, p.created_at)",
    credited="c.issued_at",
)


def money(*, months: list[Month], now: datetime) -> Figures:
    """Invoiced: the totals of the invoices issued in the month, void ones left out (never
    owed). Collected: the card charges and recorded payments that succeeded in the month (one
    a lost dispute took back later stays collected in the month it was). Credited: the totals
    of the credit notes issued in the month. All tax included."""
    return _collect(_query(_MONEY, _params(months, now)), months, MONEY_SERIES)


FAILED_SERIES = ["opened", "recovered", "suspended", "written_off"]

_FAILED = _in_months(
    """
SELECT {month_of_started}, s.currency, 'opened', count(*)
FROM billing_dunningcase c JOIN subscriptions_subscription s ON s.id = c.subscription_id
WHERE {in_started}
GROUP BY 1, 2
UNION ALL
SELECT {month_of_closed}, s.currency, 'recovered', count(*)
FROM billing_dunningcase c JOIN subscriptions_subscription s ON s.id = c.subscription_id
WHERE {in_closed} AND c.status = %(resolved)s AND NOT EXISTS (
  SELECT 1 FROM billing_invoice w WHERE w.subscription_id = c.subscription_id
  AND w.status = %(uncollectible)s AND w.closed_at = c.closed_at)
GROUP BY 1, 2
UNION ALL
SELECT {month_of_ran}, s.currency, 'suspended', count(*)
FROM billing_dunningstep st
JOIN billing_dunningcase c ON c.id = st.case_id
JOIN subscriptions_subscription s ON s.id = c.subscription_id
WHERE {in_ran} AND st.step = %(day_14)s AND st.result <> %(running)s
GROUP BY 1, 2
UNION ALL
SELECT {month_of_written_off}, i.currency, 'written_off', count(*)
FROM billing_invoice i
WHERE {in_written_off} AND i.status = %(uncollectible)s
GROUP BY 1, 2
""",
    started="c.started_at",
    closed="c.closed_at",
    ran="st.ran_at",
    written_off="i.closed_at",
)


def failed_payments(*, months: list[Month], now: datetime) -> Figures:
    """Per the subscription's currency: failed-payment cases opened (day 0), recovered (paid
    up; not the ones a write-off closed), accounts suspended (day 14 done), and invoices
    written off (marked uncollectible, and still so)."""
    return _collect(_query(_FAILED, _params(months, now)), months, FAILED_SERIES)


CANCELLATION_SERIES = [value for value, _ in CancellationReason.choices]

_CANCELLATIONS = _in_months(
    """
SELECT {month_of_canceled}, s.currency,
       coalesce(nullif(s.cancellation_reason, ''), %(other)s), count(*)
FROM subscriptions_subscription s
WHERE {in_canceled}
GROUP BY 1, 2, 3
""",
    canceled="s.canceled_at",
)


def cancellations(*, months: list[Month], now: datetime) -> Figures:
    """Cancellations by the reason the Admin gave, in the month they cancelled (one undone since
    no longer counts: the subscription forgets it)."""
    return _collect(_query(_CANCELLATIONS, _params(months, now)), months, CANCELLATION_SERIES)


_NEW = _in_months(
    """
SELECT {month_of_start}, i.currency, 'new', count(*)
FROM billing_invoice i JOIN subscriptions_subscription s ON s.id = i.subscription_id
WHERE {in_start} AND i.starts_term AND i.kind = %(period)s
  AND (i.status = %(paid)s OR (i.status = %(open)s AND s.status <> %(incomplete)s))
GROUP BY 1, 2
""",
    start="i.period_start",
)


def new_subscriptions(*, months: list[Month], now: datetime) -> Figures:
    """Subscription terms started in the month: first period invoices (choosing a plan, or
    again after one ended) that count, by the start of their period."""
    return _collect(_query(_NEW, _params(months, now)), months, ["new"])
