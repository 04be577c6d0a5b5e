"""Monthly partitions of the Sync Info and snapshot tables, created ahead by a job."""

import logging
from datetime import UTC, datetime

from dateutil.relativedelta import relativedelta
from django.db import connection, transaction

logger = logging.getLogger(__name__)

TABLES = ("usage_syncinfo", "usage_snapshot")
MONTHS_BACK = 13  # Enterprise keeps Sync Info 12 months
MONTHS_AHEAD = 2


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def partition_name(table: str, start: datetime) -> str:
    return f"{table}_y{start.year}m{start.month:02d}"


def partitions_ensure(*, now: datetime) -> int:
    """Create the missing monthly partitions from MONTHS_BACK before to MONTHS_AHEAD after now.

    A month whose rows already sit in the default partition is left there (still correct, only
    not prunable) rather than blocking writers to move them. Safe to run twice or concurrently.
    """
    created = 0
    first = month_start(now) - relativedelta(months=MONTHS_BACK)
    for offset in range(MONTHS_BACK + MONTHS_AHEAD + 1):
        start = first + relativedelta(months=offset)
        end = start + relativedelta(months=1)
        for table in TABLES:
            name = partition_name(table, start)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT to_regclass(%s)", [name])
                if cursor.fetchone()[0] is not None:
                    continue
                cursor.execute(
                    f"SELECT EXISTS (SELECT 1 FROM {table}_default "  # noqa: S608 - fixed names
                    "WHERE synced_at >= %s AND synced_at < %s)",
                    [start, end],
                )
                if cursor.fetchone()[0]:
                    logger.warning("%s: rows for %s are in the default partition", table, name)
                    continue
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [name])
                cursor.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
                    "FOR VALUES FROM (%s) TO (%s)",
                    [start, end],
                )
                created += 1
    return created
