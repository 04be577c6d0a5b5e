"""Usage figures the billing engine charges overage on.

Reads only: the usage counters of closed usage months, in one aggregate query for many
subscriptions at once. What was billed is recorded by billing (which imports this module,
never the other way round).
"""

from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from subscriptions.models import BillingCycle, Plan, Subscription
from usage.models import UsageCounter


def months_usage(keys: list[tuple[int, datetime]]) -> dict[tuple[int, datetime], int]:
    """Transactions of each (organisation id, usage month start) in `keys`, in one query.

    Months without any counter are absent from the answer (zero transactions).
    """
    if not keys:
        return {}
    pairs = sorted(set(keys))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT c.organisation_id, c.month_start, SUM(c.transactions) "  # noqa: S608
            f"FROM {UsageCounter._meta.db_table} c "
            "JOIN unnest(%s::bigint[], %s::timestamptz[]) AS k(organisation_id, month_start) "
            "ON c.organisation_id = k.organisation_id AND c.month_start = k.month_start "
            "GROUP BY c.organisation_id, c.month_start",
            [[org for org, _ in pairs], [month for _, month in pairs]],
        )
        return {(org, month): int(total) for org, month, total in cursor.fetchall()}


@dataclass(frozen=True)
class MonthOverLimit:
    subscription_id: int
    organisation_id: int
    month_start: datetime
    transactions: int


def annual_months_over_limit(
    *, since: datetime, before: datetime, statuses: frozenset[str]
) -> list[MonthOverLimit]:
    """Usage months of annual subscriptions started in [since, before) whose transactions exceed
    the current plan's monthly limit, oldest first. One aggregate query.

    Only months from the subscription's anchor on count: earlier ones belong to a monthly
    term, whose renewal invoice carries their overage. The caller checks which months have
    closed (each ends a month after its start, in the organisation's time zone) and which are
    billed already.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT s.id, s.organisation_id, c.month_start, SUM(c.transactions) "  # noqa: S608
            f"FROM {UsageCounter._meta.db_table} c "
            f"JOIN {Subscription._meta.db_table} s ON s.organisation_id = c.organisation_id "
            f"JOIN {Plan._meta.db_table} p ON p.id = s.plan_id "
            "WHERE s.billing_cycle = %s AND s.status = ANY(%s) AND NOT s.cancel_at_period_end "
            "AND c.month_start >= s.anchor_at AND c.month_start >= %s AND c.month_start < %s "
            "GROUP BY s.id, s.organisation_id, c.month_start, p.monthly_transactions "
            "HAVING SUM(c.transactions) > p.monthly_transactions "
            "ORDER BY c.month_start, s.id",
            [BillingCycle.ANNUAL, sorted(statuses), since, before],
        )
        return [
            MonthOverLimit(
                subscription_id=sid, organisation_id=org, month_start=month, transactions=int(n)
            )
            for sid, org, month, n in cursor.fetchall()
        ]
