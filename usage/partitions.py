"""Partitions of the Sync Info and snapshot tables, laid out so the retention purge drops whole
tables for every plan.

Each row carries `retention_days`, its tier: how many days the organisation's plan kept that
table when the row was ingested (Sync Info: the plan's Sync Info retention; snapshots: its
snapshot retention capped by its Sync Info retention; no subscription: the shortest of the
catalogue, as the purge applies). Each table is LIST-partitioned on the tier, one tier table
per retention value of the plan catalogue, each RANGE-partitioned on synced_at in blocks of
whole weeks:

    usage_syncinfo                         LIST (retention_days)       (migration 0004)
    ├── usage_syncinfo_r30                 IN (30): RANGE (synced_at)
    │   ├── usage_syncinfo_r30_d20261123   [Monday 2026-11-23, + the tier's block) UTC
    │   ├── ...
    │   └── usage_syncinfo_r30_default     synced_at outside the blocks created
    ├── usage_syncinfo_r90, usage_syncinfo_r365 ...
    └── usage_syncinfo_default             tiers without a table      (migration 0004)

Why by tier: all the rows of one tier's block expire together, so once the block ends at or
before `now - tier days` the purge drops it whole, for Standard as for Enterprise, instead of
deleting row by row everything younger than the longest retention.

Why blocks of about a twelfth of the tier's retention (whole weeks, at least one: 1 week for
30 and 90 days, 4 weeks for 365): the purge deletes row by row only what lies between the
start of a tier's boundary block and the exact cutoff, so that stays under a twelfth of what
the tier holds even on a catch-up run, while each tier keeps about 13 blocks whatever its
retention. More, shorter blocks would cost every query on the parent that cannot prune by
tier (the Sync Info page, the export), which plans over all of them. Blocks are aligned on
EPOCH, a Monday, so a tier's blocks never shift. They exist from the one holding
`now - tier days` to AHEAD ahead: for today's catalogue about 50 Sync Info and 40 snapshot
tables in all.

Rows older than the first block go to the tier's default partition: they were past the tier's
retention when ingested (a backfill), so the default normally holds only expired rows and the
purge drops it whole too (swapped for an empty one). A block the purge dropped is never
created again: it ends before the first block kept.

A tier table is created when a plan brings a new retention value; rows the ingest wrote for
that value before then (they sat in the top default partition) are moved into it. A block
whose rows already sit in its tier's default is left there (still correct, only not
prunable) rather than blocking writers to move them.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction

from subscriptions.models import Plan, Subscription

logger = logging.getLogger(__name__)

SYNC_INFO_TABLE = "usage_syncinfo"
SNAPSHOT_TABLE = "usage_snapshot"
TABLES = (SYNC_INFO_TABLE, SNAPSHOT_TABLE)
WEEK = timedelta(weeks=1)
EPOCH = datetime(2001, 1, 1, tzinfo=UTC)  # a Monday
AHEAD = 4 * WEEK
# Written when there is no plan at all to take a retention from: lands in the default
# partition, which the purge handles row by row.
UNKNOWN_TIER = 0


@dataclass(frozen=True)
class Retention:
    """Days a plan keeps Sync Info and snapshots. Snapshots are kept no longer than their
    Sync Info rows."""

    sync_info_days: int
    snapshot_days: int

    def days(self, table: str) -> int:
        if table == SNAPSHOT_TABLE:
            return min(self.snapshot_days, self.sync_info_days)
        return self.sync_info_days


def plan_retention(plan: Plan) -> Retention:
    return Retention(plan.sync_info_retention_days, plan.snapshot_retention_days)


def shortest_retention() -> Retention | None:
    """What an organisation without a subscription gets: the shortest of the catalogue (it
    pays for no longer history). None without any plan."""
    rows = list(Plan.objects.values_list("sync_info_retention_days", "snapshot_retention_days"))
    if not rows:
        return None
    return Retention(min(sync for sync, _ in rows), min(snap for _, snap in rows))


def ingest_retention(subscription: Subscription | None) -> Retention:
    """The tiers rows ingested now are written with: the subscription's current plan (after a
    downgrade, the new plan once the renewal switched it), whatever its status."""
    if subscription is not None:
        return plan_retention(subscription.plan)
    return shortest_retention() or Retention(UNKNOWN_TIER, UNKNOWN_TIER)


def catalogue_tiers() -> dict[str, list[int]]:
    """The tier values of the plan catalogue, per table (the shortest is one of them)."""
    plans = [
        Retention(sync, snap)
        for sync, snap in Plan.objects.values_list(
            "sync_info_retention_days", "snapshot_retention_days"
        )
    ]
    return {table: sorted({plan.days(table) for plan in plans}) for table in TABLES}


def block_width(days: int) -> timedelta:
    """A tier's block: about a twelfth of its retention, in whole weeks, at least one."""
    return max(1, days // 84) * WEEK


def block_start(days: int, moment: datetime) -> datetime:
    """Start of the tier's block holding `moment`."""
    width = block_width(days)
    return EPOCH + (moment - EPOCH) // width * width


def tier_name(table: str, days: int) -> str:
    return f"{table}_r{days}"


def block_name(table: str, days: int, start: datetime) -> str:
    return f"{tier_name(table, days)}_d{start:%Y%m%d}"


def default_name(table: str, days: int) -> str:
    return f"{tier_name(table, days)}_default"


def tier_blocks(days: int, *, now: datetime) -> list[datetime]:
    """Starts of the blocks a tier keeps partitions for at `now`."""
    width = block_width(days)
    first = block_start(days, now - timedelta(days=days))
    last = block_start(days, now + AHEAD)
    return [first + n * width for n in range((last - first) // width + 1)]


def _existing(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
            "AND relkind IN ('r', 'p') AND relname LIKE %s",
            [f"{table}\\_r%"],
        )
        return {row[0] for row in cursor.fetchall()}


def partitions_ensure(*, now: datetime) -> int:
    """Create the missing tier tables and blocks of both tables (see the module docstring).
    Safe to run twice or concurrently. Returns how many tables were created."""
    created = 0
    for table, tiers in catalogue_tiers().items():
        existing = _existing(table)
        for days in tiers:
            blocks = tier_blocks(days, now=now)
            if tier_name(table, days) not in existing:
                created += _tier_create(table, days, blocks)
                continue
            for start in blocks:
                if block_name(table, days, start) not in existing:
                    created += _block_create(table, days, start)
    return created


def _block_sql(table: str, days: int, start: datetime) -> str:
    end = start + block_width(days)
    return (
        f"CREATE TABLE IF NOT EXISTS {block_name(table, days, start)} "
        f"PARTITION OF {tier_name(table, days)} "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


def _tier_create(table: str, days: int, blocks: list[datetime]) -> int:
    """The tier table, its default and its blocks in one transaction; rows of this tier in
    the top default partition (ingested before the tier existed) move in with them."""
    tier = tier_name(table, days)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [tier])
        cursor.execute("SELECT to_regclass(%s)", [tier])
        if cursor.fetchone()[0] is not None:
            return 0
        cursor.execute(f"CREATE TEMPORARY TABLE moving (LIKE {table}) ON COMMIT DROP")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {table}_default "  # noqa: S608 - fixed names
            "WHERE retention_days = %s RETURNING *) INSERT INTO moving SELECT * FROM moved",
            [days],
        )
        moved = cursor.rowcount
        cursor.execute(
            f"CREATE TABLE {tier} PARTITION OF {table} FOR VALUES IN ({int(days)}) "
            "PARTITION BY RANGE (synced_at)"
        )
        cursor.execute(f"CREATE TABLE {default_name(table, days)} PARTITION OF {tier} DEFAULT")
        for start in blocks:
            cursor.execute(_block_sql(table, days, start))
        cursor.execute(f"INSERT INTO {table} SELECT * FROM moving")  # noqa: S608
        cursor.execute("DROP TABLE moving")
    if moved:
        logger.info("%s: %s row(s) moved in from %s_default", tier, moved, table)
    return 2 + len(blocks)


def _block_create(table: str, days: int, start: datetime) -> int:
    name = block_name(table, days, start)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [name])
        cursor.execute("SELECT to_regclass(%s)", [name])
        if cursor.fetchone()[0] is not None:
            return 0
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {default_name(table, days)} "  # noqa: S608
            "WHERE synced_at >= %s AND synced_at < %s)",
            [start, start + block_width(days)],
        )
        if cursor.fetchone()[0]:
            logger.warning("%s: rows for %s are in the tier's default partition", table, name)
            return 0
        cursor.execute(_block_sql(table, days, start))
    return 1
