"""Nightly retention purge of Sync Info and snapshots.

Sync Info and snapshots are partitioned by retention tier (the organisation's retention in
days when the row was ingested), then in blocks of weeks (usage.partitions has the layout and
why). Three steps, each safe to interrupt and to rerun:

1. Rows an upgrade made younger than their tier. An organisation whose current retention is
   longer than a tier it still has rows in (it upgraded, or subscribed after ingesting
   without a plan) would lose them early when that tier's blocks are dropped: its rows
   between its own cutoff and the tier's are moved to its current tier first (an UPDATE of
   retention_days moves them across partitions), in batches. Rare.
2. Whole tables. Each block of a tier that ends on or before `now - tier days` now holds only
   rows their organisations have to lose; so does a tier's default partition whose newest row
   is older than that (it only catches rows older than the tier's blocks). Each is DETACHed in
   a short transaction with a lock timeout (a busy table is left for tomorrow, its rows
   deleted by step 3 meanwhile); a default is swapped for an empty one in that same
   transaction. Then, in a second transaction, its rows are counted and the table DROPped
   together with the DeletionRecord update. A crash between the two leaves a detached table
   (`..._dYYYYMMDD`, or `..._expired` for a default); the next run finds it by name and
   finishes it.
3. Rows past retention that are left, in batches of about `batch_size` rows, oldest first,
   each batch a range of synced_at (blocks past the cutoff are pruned) in its own short
   transaction that also adds its counts to the organisations' DeletionRecords of this run,
   so the records are exact even if the run dies half-way and a rerun just continues with
   what is left. Per tier: the rows before `now - tier days` (in the tier's boundary block,
   or in a default that could not be dropped), counted per organisation from the DELETE's
   RETURNING; every such row is past its organisation's retention once step 1 has run. Then
   per organisation, rows it must lose before their tier's cutoff: in a tier longer than its
   retention (it downgraded) or in a tier without a table.

Retention per organisation: the plan of its subscription, whatever the status (an ended
subscription keeps its plan's retention until the cancellation deletion removes the data;
after a downgrade, the new plan's from the renewal that switched it). An organisation without
a subscription (never subscribed, or rows of an organisation id that no longer exists) gets
the SHORTEST retention of any plan: it pays for no longer history. Snapshots are kept no
longer than their Sync Info rows: their retention is min(snapshot, Sync Info retention days).

A cutoff is exact: a row is deleted when `synced_at < now - retention`.

Only one run at a time: a session advisory lock; a second concurrent run returns at once with
`{"skipped": True, ...}`.
"""

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.utils import OperationalError

from accounts.models import Organisation
from retention.models import DeletionRecord
from subscriptions.models import Subscription
from usage.partitions import (
    SNAPSHOT_TABLE,
    SYNC_INFO_TABLE,
    Retention,
    block_width,
    shortest_retention,
    tier_name,
)

logger = logging.getLogger(__name__)

LOCK_NAME = "retention_purge"
# A DETACH waiting for the parent's lock makes every new reader and writer queue behind it, so
# it waits briefly and tries again a few times; still busy, the table is left for tomorrow
# (its rows are deleted in batches instead): readers and ingestion never queue for long.
DETACH_LOCK_TIMEOUT = "300ms"
DETACH_ATTEMPTS = 5
DETACH_PAUSE = 0.5  # seconds between attempts


@dataclass(frozen=True)
class Table:
    kind: str  # key in DeletionRecord.counts
    name: str


SYNC_INFO = Table("sync_info", SYNC_INFO_TABLE)
SNAPSHOTS = Table("snapshots", SNAPSHOT_TABLE)
TABLES = (SYNC_INFO, SNAPSHOTS)


class _Busy(Exception):
    """The default partition got a row younger than the cutoff: not swapped tonight."""


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
    fallback = shortest_retention()
    if fallback is None:
        # No catalogue, no retention to apply: never guess.
        return {"skipped": True, "reason": "no plans", **totals, "partitions_dropped": []}
    by_org = {
        org_id: Retention(sync_days, snap_days)
        for org_id, sync_days, snap_days in Subscription.objects.values_list(
            "organisation_id", "plan__sync_info_retention_days", "plan__snapshot_retention_days"
        )
    }

    org_ids = sorted(set().union(*(_organisation_ids(table.name) for table in TABLES)))
    retentions = {org_id: by_org.get(org_id, fallback) for org_id in org_ids}

    # 1. Rows of organisations whose retention outgrew their tier.
    for table in TABLES:
        _relocate(table, retentions=retentions, now=now, batch_size=batch_size)

    # 2. Whole tables.
    dropped = _drop_expired_partitions(now=now, totals=totals)

    # 3. Rows, per tier, then per organisation.
    labels = dict(Organisation.objects.values_list("pk", "name"))
    records: dict[int, DeletionRecord] = {}

    def record(counts: dict[int, int], kind: str) -> None:
        for org_id, count in counts.items():
            records[org_id] = _record_add(
                records.get(org_id),
                organisation_id=org_id if org_id in labels else None,
                label=labels.get(org_id, f"organisation #{org_id} (deleted)"),
                kind=kind,
                count=count,
                detail=f"Older than the plan's retention on {now:%Y-%m-%d %H:%M} UTC",
                now=now,
            )
            totals[kind] += count

    for table in TABLES:
        for tier in _tiers(table):
            cutoff = now - timedelta(days=tier)
            more = True
            while more:
                with transaction.atomic():
                    counts, more = _delete_batch(table, tier, cutoff, batch_size)
                    record(counts, table.kind)
        for org_id, cutoff in _early_rows(table, retentions=retentions, now=now):
            more = True
            while more:
                with transaction.atomic():
                    deleted, more = _delete_organisation_batch(table, org_id, cutoff, batch_size)
                    record({org_id: deleted} if deleted else {}, table.kind)
    return {
        "skipped": False,
        **totals,
        "partitions_dropped": dropped,
        "organisations": len(records),
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


def _batch(table: Table, where: str, params: list, batch_size: int, apply):
    """One batch of the rows matching `where`: everything before the (batch_size + 1)-th
    oldest one's instant (found on an index with synced_at), then `apply(where, params)`, a
    range statement (partition pruning, no self-join) that takes the rows out of `where` and
    returns what it did, falsy for nothing. Returns (that, whether matching rows may remain)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT synced_at FROM {table.name} WHERE {where} "  # noqa: S608 - fixed SQL
            "ORDER BY synced_at LIMIT 1 OFFSET %s",
            [*params, batch_size],
        )
        row = cursor.fetchone()
    if row is None:
        return apply(where, params), False
    done = apply(f"{where} AND synced_at < %s", [*params, row[0]])
    if not done:
        # More than batch_size rows share the oldest instant: take that instant whole.
        done = apply(f"{where} AND synced_at <= %s", [*params, row[0]])
    return done, True


# 1. Relocation ----------------------------------------------------------------------------


def _tiers(table: Table) -> list[int]:
    """Tier values that have a tier table (attached)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [table.name],
        )
        names = [row[0] for row in cursor.fetchall()]
    pattern = re.compile(rf"^{table.name}_r(\d+)$")
    return sorted(int(match[1]) for name in names if (match := pattern.match(name)))


def _relocate(
    table: Table, *, retentions: dict[int, Retention], now: datetime, batch_size: int
) -> None:
    """Move rows of organisations whose retention is longer than their tier's into their
    current tier, where the tier's drop or cutoff would otherwise take them early: those
    between the organisation's cutoff and the tier's."""
    for tier in _tiers(table):
        candidates = [
            (org_id, keep)
            for org_id, retention in retentions.items()
            if (keep := retention.days(table.name)) > tier
        ]
        for org_id, keep in sorted(_having_rows(table, tier, candidates, now=now, older=False)):

            def move(where, params, keep=keep) -> int:
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"UPDATE {table.name} SET retention_days = %s WHERE {where}",  # noqa: S608
                        [keep, *params],
                    )
                    return cursor.rowcount

            where = (
                "retention_days = %s AND organisation_id = %s "
                "AND synced_at >= %s AND synced_at < %s"
            )
            params = [tier, org_id, now - timedelta(days=keep), now - timedelta(days=tier)]
            moved, more = 0, True
            while more:
                with transaction.atomic():
                    count, more = _batch(table, where, params, batch_size, move)
                moved += count
            logger.info(
                "retention_purge: %s row(s) of organisation %s moved from %s to %s",
                moved,
                org_id,
                tier_name(table.name, tier),
                tier_name(table.name, keep),
            )


def _having_rows(table: Table, tier: int, candidates, *, now: datetime, older: bool) -> set:
    """Those of the (organisation id, days) candidates with rows in the tier older than
    `now - days` (older), or else between `now - days` and the tier's cutoff: an index probe
    per candidate, all in one round trip."""
    if not candidates:
        return set()
    if older:
        condition, params = "t.synced_at < %s - make_interval(days => c.keep)", [now]
    else:
        condition = "t.synced_at >= %s - make_interval(days => c.keep) AND t.synced_at < %s"
        params = [now, now - timedelta(days=tier)]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.org, c.keep FROM unnest(%s::bigint[], %s::int[]) AS c(org, keep) "  # noqa: S608 - fixed names
            f"WHERE EXISTS (SELECT 1 FROM {table.name} t "
            f"WHERE t.retention_days = %s AND t.organisation_id = c.org AND {condition})",
            [[org for org, _ in candidates], [keep for _, keep in candidates], tier, *params],
        )
        return set(cursor.fetchall())


# 2. Whole tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    name: str
    tier: int
    kind: str  # "expired" (a detached default), "block" or "default"
    start: datetime | None
    attached: bool


_ORDER = {"expired": 0, "block": 1, "default": 2}


def _parts(table: Table) -> list[_Part]:
    """The tier tables' blocks and defaults, attached or left detached by a crashed run:
    leftovers first (a default's swap reuses the name `..._expired`), then oldest first."""
    pattern = re.compile(rf"^{table.name}_r(\d+)_(?:d(\d{{8}})|(default)|(expired))$")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, relispartition FROM pg_class "
            "WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace "
            "AND relname LIKE %s",
            [f"{table.name}\\_r%"],
        )
        rows = cursor.fetchall()
    parts = []
    for name, attached in rows:
        match = pattern.match(name)
        if match is None:
            continue
        if match[2]:
            start = datetime.strptime(match[2], "%Y%m%d").replace(tzinfo=UTC)
            parts.append(_Part(name, int(match[1]), "block", start, attached))
        elif match[3]:
            parts.append(_Part(name, int(match[1]), "default", None, attached))
        elif not attached:
            parts.append(_Part(name, int(match[1]), "expired", None, attached))
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(parts, key=lambda p: (p.tier, _ORDER[p.kind], p.start or epoch, p.name))


def _locked(statements) -> bool:
    """Run `statements(cursor)` in a transaction with a short lock timeout, trying a few
    times. False when the lock never came (or the default turned out busy)."""
    for attempt in range(DETACH_ATTEMPTS):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")
                statements(cursor)
            return True
        except _Busy:
            return False
        except OperationalError:
            if attempt + 1 < DETACH_ATTEMPTS:
                time.sleep(DETACH_PAUSE)
    return False


def _detach_block(table: Table, part: _Part) -> bool:
    tier = tier_name(table.name, part.tier)

    def detach(cursor):
        cursor.execute(f"ALTER TABLE {tier} DETACH PARTITION {part.name}")

    return _locked(detach)


def _swap_default(table: Table, part: _Part, cutoff: datetime) -> str | None:
    """Detach the tier's default, if it holds only rows older than `cutoff`, and put an empty
    default in its place; returns the detached table's name."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT max(synced_at) FROM {part.name}")  # noqa: S608 - from pg_class
        (newest,) = cursor.fetchone()
    if newest is None or newest >= cutoff:
        return None  # empty, or rows to keep: left to step 3
    tier = tier_name(table.name, part.tier)
    expired = f"{tier}_expired"

    def swap(cursor):
        cursor.execute(f"ALTER TABLE {tier} DETACH PARTITION {part.name}")
        # Checked again now that nobody can write to it.
        cursor.execute(f"SELECT max(synced_at) >= %s FROM {part.name}", [cutoff])  # noqa: S608
        if cursor.fetchone()[0]:
            raise _Busy
        cursor.execute(f"ALTER TABLE {part.name} RENAME TO {expired}")
        cursor.execute(f"CREATE TABLE {part.name} PARTITION OF {tier} DEFAULT")

    return expired if _locked(swap) else None


def _drop_expired_partitions(*, now: datetime, totals: dict) -> list[str]:
    dropped: list[str] = []
    recorded: list[str] = []
    record = None
    for table in TABLES:
        for part in _parts(table):
            cutoff = now - timedelta(days=part.tier)
            name = part.name
            if part.kind == "block":
                if part.start + block_width(part.tier) > cutoff:
                    continue
                if part.attached and not _detach_block(table, part):
                    logger.warning("retention_purge: %s busy, not detached tonight", name)
                    continue
            elif part.kind == "default":
                name = _swap_default(table, part, cutoff)
                if name is None:
                    continue
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {name}")  # noqa: S608 - name from pg_class
                (rows,) = cursor.fetchone()
                cursor.execute(f"DROP TABLE {name}")
                dropped.append(name)
                if rows:
                    recorded.append(name)
                    detail = "Dropped partitions past their tier's retention: " + ", ".join(
                        recorded
                    )
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


# 3. Rows -------------------------------------------------------------------------------------


def _delete_batch(table: Table, tier: int, cutoff: datetime, batch_size: int):
    """Delete the tier's oldest rows before `cutoff`, about `batch_size` of them. Returns
    ({organisation id: rows deleted}, whether rows before the cutoff may remain)."""

    def delete(where, params) -> dict[int, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH gone AS (DELETE FROM {table.name} WHERE {where} "  # noqa: S608
                "RETURNING organisation_id) "
                "SELECT organisation_id, count(*) FROM gone GROUP BY organisation_id",
                params,
            )
            return dict(cursor.fetchall())

    where = "retention_days = %s AND synced_at < %s"
    return _batch(table, where, [tier, cutoff], batch_size, delete)


def _delete_organisation_batch(table: Table, org_id: int, cutoff: datetime, batch_size: int):
    """Delete the organisation's oldest rows before `cutoff`, in any tier, about `batch_size`
    of them. Returns (rows deleted, whether rows before the cutoff may remain)."""

    def delete(where, params) -> int:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {table.name} WHERE {where}", params)  # noqa: S608
            return cursor.rowcount

    where = "organisation_id = %s AND synced_at < %s"
    return _batch(table, where, [org_id, cutoff], batch_size, delete)


def _early_rows(table: Table, *, retentions: dict[int, Retention], now: datetime):
    """(organisation id, its cutoff) of the organisations with rows past their retention that
    their tier's cutoff does not reach: in a longer tier (they downgraded), or in the default
    partition of tiers without a table."""
    found = set()
    for tier in _tiers(table):
        candidates = [
            (org_id, keep)
            for org_id, retention in retentions.items()
            if (keep := retention.days(table.name)) < tier
        ]
        found |= _having_rows(table, tier, candidates, now=now, older=True)
    found |= {
        (org_id, retentions[org_id].days(table.name))
        for org_id in _organisation_ids(f"{table.name}_default")
        if org_id in retentions
    }
    return sorted((org_id, now - timedelta(days=keep)) for org_id, keep in found)


def _organisation_ids(table: str) -> set[int]:
    """Distinct organisation ids in the table: a skip scan of the (organisation_id, ...) index,
    one probe per organisation rather than a scan of the rows."""
    sql = (
        "WITH RECURSIVE o AS ("  # noqa: S608 - fixed names
        f" (SELECT organisation_id FROM {table} ORDER BY organisation_id LIMIT 1)"
        " UNION ALL"
        f" SELECT (SELECT t.organisation_id FROM {table} t"
        "   WHERE t.organisation_id > o.organisation_id ORDER BY t.organisation_id LIMIT 1)"
        " FROM o WHERE o.organisation_id IS NOT NULL"
        ") SELECT organisation_id FROM o WHERE organisation_id IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return {row[0] for row in cursor.fetchall()}


def summary(result: dict) -> str:
    if result.get("skipped"):
        return f"skipped: {result.get('reason')}"
    parts = result["partitions_dropped"]
    return (
        f"{result['sync_info']} Sync Info row(s) and {result['snapshots']} snapshot(s) deleted "
        f"for {result['organisations']} organisation(s); "
        f"{len(parts)} partition(s) dropped" + (f" ({', '.join(parts)})" if parts else "")
    )
