"""Usage figures the billing engine charges overage on.

Reads only: the usage counters of closed usage months, in one aggregate query for many
subscriptions at once. What was billed is recorded by billing (which imports this module,
never the other way round).
"""

from dataclasses import dataclass
from datetime import datetime

from django.db import connection

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
            # Said again as a filter: it lets a sharded database go to the organisations'
            # shards only (docs/scaling.md).
            "WHERE c.organisation_id = ANY(%s::bigint[]) "
            "GROUP BY c.organisation_id, c.month_start",
            [
                [org for org, _ in pairs],
                [month for _, month in pairs],
                sorted({org for org, _ in pairs}),
            ],
        )
        return {(org, month): int(total) for org, month, total in cursor.fetchall()}


@dataclass(frozen=True)
class MonthOverLimit:
    subscription_id: int
    organisation_id: int
    month_start: datetime
    transactions: int
