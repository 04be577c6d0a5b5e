"""Nightly retention purge of Sync Info and snapshots (DESIGN.md section 2, Data retention;
issue 8 point 1).

Two steps, both safe to interrupt and to rerun:

1. Whole monthly partitions (`usage_syncinfo_yYYYYmMM`, `usage_snapshot_yYYYYmMM`) whose range
   ends on or before `now - longest retention of any plan` hold only rows every organisation
   has to lose: each is DETACHed (a brief lock of the parent, in its own transaction), then its
   rows are counted and the table DROPped together with the DeletionRecord update in a second
   transaction. A crash between the two leaves a detached table of that name; the next run
   finds it by name and finishes it.
2. Per organisation, rows older than its own plan's retention are deleted in batches of
   about `batch_size` rows, oldest first, each batch a range of synced_at on the
   (organisation_id, synced_at) index; each batch
   is its own short transaction that also adds its count to the organisation's DeletionRecord
   of this run, so the records are exact even if the run dies half-way and a rerun just
   continues with what is left.

Retention per organisation: the plan of its subscription, whatever the status (an ended
subscription keeps its plan's retention until the cancellation deletion removes the data).
An organisation without a subscription (never subscribed, or rows of an organisation id that
no longer exists) gets the SHORTEST retention of any plan: it pays for no longer history.
Snapshots are kept no longer than their Sync Info rows: their retention is
min(snapshot_retention_days, sync_info_retention_days).

A cutoff is exact: a row is deleted when `synced_at < now - retention`.

Only one run at a time: a session advisory lock; a second concurrent run returns at once with
`{"skipped": True, ...}`.
"""

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dateutil.relativedelta import relativedelta
from django.db import connection, transaction
from django.db.models import Max, Min
from django.db.utils import OperationalError

from accounts.models import Organisation
from retention.models import DeletionRecord
from subscriptions.models import Plan, Subscription

logger = logging.getLogger(__name__)

LOCK_NAME = "retention_purge"
# Waiting longer than this for the parent's lock to detach a partition gives up for tonight
# (the rows are then deleted in batches instead): readers and ingestion never queue behind us.
DETACH_LOCK_TIMEOUT = "3s"


@dataclass(frozen=True)
class Table:
    kind: str  # key in DeletionRecord.counts
    name: str
    key: str  # second column of the primary key (synced_at, key)


SYNC_INFO = Table("sync_info", "usage_syncinfo", "id")
SNAPSHOTS = Table("snapshots", "usage_snapshot", "sync_info_id")
TABLES = (SYNC_INFO, SNAPSHOTS)


@dataclass(frozen=True)
class Retention:
    sync_info_days: int
    snapshot_days: int

    def days(self, table: Table) -> int:
        if table is SNAPSHOTS:
            return min(self.snapshot_days, self.sync_info_days)
        return self.sync_info_days


def retention_purge(*, now: datetime, batch_size: int = 50_000) -> dict:
    """Purge Sync Info and snapshots past retention. Returns the totals of this run."""
    if now.tzinfo is None:
        raise ValueError("retention_purge needs an aware datetime.")
    if batch_size < 1:
        raise ValueError("batch_size must be positive.")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [LOCK_NAME])
        (locked,) = cursor.fetchone()
    if not locked:
        logger.info("retention_purge: another run holds the lock; nothing done")
        return {
            "skipped": True,
            "reason": "another retention purge is running",
            "sync_info": 0,
            "snapshots": 0,
            "partitions_dropped": [],
            "organisations": 0,
        }
    try:
        return _purge(now=now, batch_size=batch_size)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [LOCK_NAME])


def _purge(*, now: datetime, batch_size: int) -> dict:
    totals = {"sync_info": 0, "snapshots": 0}
    plans = Plan.objects.aggregate(
        max_sync=Max("sync_info_retention_days"),
        min_sync=Min("sync_info_retention_days"),
        max_snap=Max("snapshot_retention_days"),
        min_snap=Min("snapshot_retention_days"),
    )
    if plans["max_sync"] is None:
        # No catalogue, no retention to apply: never guess.
        return {"skipped": True, "reason": "no plans", **totals, "partitions_dropped": []}
    longest = {
        SYNC_INFO: plans["max_sync"],
        # Snapshot retention is capped by Sync Info retention per plan, so the longest snapshot
        # retention is at most max_snap (and at most max_sync).
        SNAPSHOTS: min(plans["max_snap"], plans["max_sync"]),
    }
    fallback = Retention(sync_info_days=plans["min_sync"], snapshot_days=plans["min_snap"])

    # 1. Whole partitions.
    dropped = _drop_old_partitions(now=now, longest=longest, totals=totals)

    # 2. Rows per organisation.
    by_org = {
        org_id: Retention(sync_days, snap_days)
        for org_id, sync_days, snap_days in Subscription.objects.values_list(
            "organisation_id", "plan__sync_info_retention_days", "plan__snapshot_retention_days"
        )
    }
    labels = dict(Organisation.objects.values_list("pk", "name"))
    org_ids = sorted(set().union(*(_organisation_ids(table) for table in TABLES)))
    organisations = 0
    for org_id in org_ids:
        retention = by_org.get(org_id, fallback)
        record = None
        for table in TABLES:
            cutoff = now - timedelta(days=retention.days(table))
            while True:
                with transaction.atomic():
                    deleted, more = _delete_batch(table, org_id, cutoff, batch_size)
                    if deleted:
                        record = _record_add(
                            record,
                            organisation_id=org_id if org_id in labels else None,
                            label=labels.get(org_id, f"organisation #{org_id} (deleted)"),
                            kind=table.kind,
                            count=deleted,
                            detail=f"Older than the plan's retention on {now:%Y-%m-%d %H:%M} UTC",
                            now=now,
                        )
                totals[table.kind] += deleted
                if not more:
                    break
        if record is not None:
            organisations += 1
    return {
        "skipped": False,
        **totals,
        "partitions_dropped": dropped,
        "organisations": organisations,
    }


def _record_add(record, *, organisation_id, label, kind, count, detail, now):
    """Create or grow this run's DeletionRecord, inside the caller's transaction."""
    if record is None:
        counts = {"sync_info": 0, "snapshots": 0}
        counts[kind] += count
        return DeletionRecord.objects.create(
            organisation_id=organisation_id,
            organisation_label=label[:200],
            kind=DeletionRecord.Kind.RETENTION,
            counts=counts,
            detail=detail[:255],
            created_at=now,
        )
    record.counts[kind] = record.counts.get(kind, 0) + count
    DeletionRecord.objects.filter(pk=record.pk).update(counts=record.counts, detail=detail[:255])
    record.detail = detail[:255]
    return record


def _delete_batch(table: Table, org_id: int, cutoff: datetime, batch_size: int) -> tuple[int, bool]:
    """Delete the organisation's oldest rows before `cutoff`, about `batch_size` of them.

    The batch is a time range: everything before the (batch_size + 1)-th oldest row's instant,
    found on the (organisation_id, synced_at) index, then one range DELETE (partition pruning,
    no self-join). Returns (rows deleted, whether rows before the cutoff may remain).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT synced_at FROM {table.name} "  # noqa: S608 - fixed names
            "WHERE organisation_id = %s AND synced_at < %s "
            "ORDER BY synced_at LIMIT 1 OFFSET %s",
            [org_id, cutoff, batch_size],
        )
        row = cursor.fetchone()
        bound = row[0] if row is not None else cutoff
        delete = f"DELETE FROM {table.name} WHERE organisation_id = %s AND synced_at "  # noqa: S608
        cursor.execute(delete + "< %s", [org_id, bound])
        deleted = cursor.rowcount
        if deleted == 0 and row is not None:
            # More than batch_size rows share the oldest instant: take that instant whole.
            cursor.execute(delete + "<= %s", [org_id, bound])
            deleted = cursor.rowcount
        return deleted, row is not None


def _organisation_ids(table: Table) -> set[int]:
    """Distinct organisation ids in the table: a skip scan of the (organisation_id, ...) index,
    one probe per organisation rather than a scan of the rows."""
    sql = (
        "WITH RECURSIVE o AS ("  # noqa: S608 - fixed names
        f" (SELECT organisation_id FROM {table.name} ORDER BY organisation_id LIMIT 1)"
        " UNION ALL"
        f" SELECT (SELECT t.organisation_id FROM {table.name} t"
        "   WHERE t.organisation_id > o.organisation_id ORDER BY t.organisation_id LIMIT 1)"
        " FROM o WHERE o.organisation_id IS NOT NULL"
        ") SELECT organisation_id FROM o WHERE organisation_id IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return {row[0] for row in cursor.fetchall()}


def _monthly_tables(table: Table) -> list[tuple[str, datetime, bool]]:
    """(name, month start, attached?) of the monthly tables, attached or left detached."""
    pattern = re.compile(rf"^{table.name}_y(\d{{4}})m(\d{{2}})$")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.relispartition FROM pg_class c "
            "WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace "
            "AND c.relname LIKE %s",
            [f"{table.name}\\_y%"],
        )
        rows = cursor.fetchall()
    found = []
    for name, attached in rows:
        match = pattern.match(name)
        if match:
            start = datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)
            found.append((name, start, attached))
    return sorted(found, key=lambda item: item[1])


def _drop_old_partitions(*, now, longest, totals) -> list[str]:
    dropped: list[str] = []
    record = None
    for table in TABLES:
        cutoff = now - timedelta(days=longest[table])
        for name, start, attached in _monthly_tables(table):
            end = start + relativedelta(months=1)
            if end > cutoff:
                continue
            if attached:
                with connection.cursor() as cursor:
                    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {name})")  # noqa: S608
                    if not cursor.fetchone()[0]:
                        # Empty: nothing to purge, and partitions_ensure would only create it
                        # again; leave it rather than lock the parent for nothing.
                        continue
                try:
                    with transaction.atomic(), connection.cursor() as cursor:
                        cursor.execute(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")
                        cursor.execute(f"ALTER TABLE {table.name} DETACH PARTITION {name}")
                except OperationalError:
                    logger.warning("retention_purge: %s busy, not detached tonight", name)
                    continue
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {name}")  # noqa: S608 - name from pg_class
                (rows,) = cursor.fetchone()
                cursor.execute(f"DROP TABLE {name}")
                dropped.append(name)
                detail = "Dropped partitions past every plan's retention: " + ", ".join(dropped)
                record = _record_add(
                    record,
                    organisation_id=None,
                    label="",
                    kind=table.kind,
                    count=rows,
                    detail=detail if len(detail) <= 255 else detail[:252] + "...",
                    now=now,
                )
            totals[table.kind] += rows
            logger.info("retention_purge: dropped %s (%s rows)", name, rows)
    return dropped


def summary(result: dict) -> str:
    if result.get("skipped"):
        return f"skipped: {result.get('reason')}"
    parts = result["partitions_dropped"]
    return (
        f"{result['sync_info']} Sync Info row(s) and {result['snapshots']} snapshot(s) deleted "
        f"for {result['organisations']} organisation(s); "
        f"{len(parts)} partition(s) dropped" + (f" ({', '.join(parts)})" if parts else "")
    )
