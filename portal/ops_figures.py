"""The ops dashboard's monthly figures: the last twelve calendar months (UTC), per currency
(docs/architecture.md#decision-the-ops-charts-and-the-finance-export).

One aggregate query per chart family, grouped by month and currency over the twelve month
boundaries given as arrays, so the cost never depends on how many organisations there are.
The rules (what MRR counts, when money counts as collected, ...) are written down in the
decision; billing.finance_export lists the same invoices and credit notes a month at a time.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.db import connection

from billing.dunning import RUNNING
from billing.models import DunningCase, DunningStep, Invoice, InvoiceLine, Payment
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


def month_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def last_months(*, now: datetime, count: int = MONTHS) -> list[Month]:
    """The `count` calendar months (UTC) up to and including now's, oldest first."""
    start = month_start(now)
    starts = [start]
    for _ in range(count - 1):
        previous = starts[-1]
        starts.append(
            previous.replace(
                year=previous.year - (previous.month == 1), month=(previous.month - 2) % 12 + 1
            )
        )
    starts.reverse()
    return [Month(start=s, end=next_month(s), is_current=s == start) for s in starts]


# Figures: {currency: {series: [value per month, oldest first]}} ----------------------------

Figures = dict[str, dict[str, list[int]]]


def _collect(rows, months: list[Month], series: list[str]) -> Figures:
    """Rows of (month index, currency, series, value) as one list per currency and series, a
    month without a row being 0."""
    figures: Figures = defaultdict(lambda: {name: [0] * len(months) for name in series})
    for index, currency, name, value in rows:
        figures[currency][name][index] = int(value)
    return dict(figures)


def _query(sql: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _params(months: list[Month], now: datetime) -> dict:
    """The months as parallel arrays for unnest(): index, start, end, and the instant MRR is
    taken at (the month's last instant; now for this month); and the codes the queries use."""
    return {
        "index": list(range(len(months))),
        "start": [m.start for m in months],
        "end": [m.end for m in months],
        "at": [min(m.end, now) for m in months],
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


# Each query starts from the twelve months as rows (i, start_at, end_at, mrr_at). A period
# invoice counts when paid, or still owed by a subscription that had started (a first invoice
# waiting while the subscription is incomplete is a checkout, not a customer yet).
_MRR = """
WITH months AS (
  SELECT * FROM unnest(%(index)s::int[], %(start)s::timestamptz[], %(end)s::timestamptz[],
                       %(at)s::timestamptz[]) AS m(i, start_at, end_at, mrr_at)
)
SELECT m.i, i.currency,
       sum(l.amount) FILTER (WHERE i.billing_cycle = %(monthly)s),
       sum(l.amount) FILTER (WHERE i.billing_cycle = %(annual)s)
FROM months m
JOIN billing_invoiceline l
  ON l.kind = %(plan)s AND l.period_start < m.mrr_at AND l.period_end >= m.mrr_at
JOIN billing_invoice i ON i.id = l.invoice_id AND i.kind = %(period)s
JOIN subscriptions_subscription s ON s.id = i.subscription_id
WHERE (i.status = %(paid)s OR (i.status = %(open)s AND s.status <> %(incomplete)s))
  AND NOT (s.status = %(ended)s AND s.ended_at < m.mrr_at)
GROUP BY m.i, i.currency
"""


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

_MONEY = """
WITH months AS (
  SELECT * FROM unnest(%(index)s::int[], %(start)s::timestamptz[], %(end)s::timestamptz[],
                       %(at)s::timestamptz[]) AS m(i, start_at, end_at, mrr_at)
)
SELECT m.i, i.currency, 'invoiced', sum(i.total)
FROM months m
JOIN billing_invoice i ON i.issued_at >= m.start_at AND i.issued_at < m.end_at
WHERE i.status <> %(void)s
GROUP BY m.i, i.currency
UNION ALL
SELECT m.i, p.currency, 'collected', sum(p.amount)
FROM months m
JOIN billing_payment p ON coalesce(p.completed_at, p.created_at) >= m.start_at
  AND coalesce(p.completed_at, p.created_at) < m.end_at
WHERE p.status IN (%(succeeded)s, %(charged_back)s)
GROUP BY m.i, p.currency
UNION ALL
SELECT m.i, c.currency, 'credited', sum(c.total)
FROM months m
JOIN billing_creditnote c ON c.issued_at >= m.start_at AND c.issued_at < m.end_at
GROUP BY m.i, c.currency
"""


def money(*, months: list[Month], now: datetime) -> Figures:
    """Invoiced: the totals of the invoices issued in the month, void ones left out (never
    owed). Collected: the card charges and recorded payments that succeeded in the month (one
    a lost dispute took back later stays collected in the month it was). Credited: the totals
    of the credit notes issued in the month. All tax included."""
    return _collect(_query(_MONEY, _params(months, now)), months, MONEY_SERIES)


FAILED_SERIES = ["opened", "recovered", "suspended", "written_off"]

_FAILED = """
WITH months AS (
  SELECT * FROM unnest(%(index)s::int[], %(start)s::timestamptz[], %(end)s::timestamptz[],
                       %(at)s::timestamptz[]) AS m(i, start_at, end_at, mrr_at)
)
SELECT m.i, s.currency, 'opened', count(*)
FROM months m
JOIN billing_dunningcase c ON c.started_at >= m.start_at AND c.started_at < m.end_at
JOIN subscriptions_subscription s ON s.id = c.subscription_id
GROUP BY m.i, s.currency
UNION ALL
SELECT m.i, s.currency, 'recovered', count(*)
FROM months m
JOIN billing_dunningcase c ON c.closed_at >= m.start_at AND c.closed_at < m.end_at
JOIN subscriptions_subscription s ON s.id = c.subscription_id
WHERE c.status = %(resolved)s AND NOT EXISTS (
  SELECT 1 FROM billing_invoice w WHERE w.subscription_id = c.subscription_id
  AND w.status = %(uncollectible)s AND w.closed_at = c.closed_at)
GROUP BY m.i, s.currency
UNION ALL
SELECT m.i, s.currency, 'suspended', count(*)
FROM months m
JOIN billing_dunningstep st ON st.ran_at >= m.start_at AND st.ran_at < m.end_at
JOIN billing_dunningcase c ON c.id = st.case_id
JOIN subscriptions_subscription s ON s.id = c.subscription_id
WHERE st.step = %(day_14)s AND st.result <> %(running)s
GROUP BY m.i, s.currency
UNION ALL
SELECT m.i, i.currency, 'written_off', count(*)
FROM months m
JOIN billing_invoice i ON i.closed_at >= m.start_at AND i.closed_at < m.end_at
WHERE i.status = %(uncollectible)s
GROUP BY m.i, i.currency
"""


def failed_payments(*, months: list[Month], now: datetime) -> Figures:
    """Per the subscription's currency: failed-payment cases opened (day 0), recovered (paid
    up; not the ones a write-off closed), accounts suspended (day 14 done), and invoices
    written off (marked uncollectible, and still so)."""
    return _collect(_query(_FAILED, _params(months, now)), months, FAILED_SERIES)


CANCELLATION_SERIES = [value for value, _ in CancellationReason.choices]

_CANCELLATIONS = """
WITH months AS (
  SELECT * FROM unnest(%(index)s::int[], %(start)s::timestamptz[], %(end)s::timestamptz[],
                       %(at)s::timestamptz[]) AS m(i, start_at, end_at, mrr_at)
)
SELECT m.i, s.currency, coalesce(nullif(s.cancellation_reason, ''), %(other)s), count(*)
FROM months m
JOIN subscriptions_subscription s ON s.canceled_at >= m.start_at AND s.canceled_at < m.end_at
GROUP BY 1, 2, 3
"""


def cancellations(*, months: list[Month], now: datetime) -> Figures:
    """Cancellations by the reason the Admin gave, in the month they cancelled (one undone since
    no longer counts: the subscription forgets it)."""
    return _collect(_query(_CANCELLATIONS, _params(months, now)), months, CANCELLATION_SERIES)


_NEW = """
WITH months AS (
  SELECT * FROM unnest(%(index)s::int[], %(start)s::timestamptz[], %(end)s::timestamptz[],
                       %(at)s::timestamptz[]) AS m(i, start_at, end_at, mrr_at)
)
SELECT m.i, i.currency, 'new', count(*)
FROM months m
JOIN billing_invoice i ON i.period_start >= m.start_at AND i.period_start < m.end_at
JOIN subscriptions_subscription s ON s.id = i.subscription_id
WHERE i.starts_term AND i.kind = %(period)s
  AND (i.status = %(paid)s OR (i.status = %(open)s AND s.status <> %(incomplete)s))
GROUP BY m.i, i.currency
"""


def new_subscriptions(*, months: list[Month], now: datetime) -> Figures:
    """Subscription terms started in the month: first period invoices (choosing a plan, or
    again after one ended) that count, by the start of their period."""
    return _collect(_query(_NEW, _params(months, now)), months, ["new"])
