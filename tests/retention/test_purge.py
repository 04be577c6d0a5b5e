"""The nightly retention purge of Sync Info and snapshots past the plan's retention."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from core.jobs import run_job
from retention import purge
from retention.models import DeletionRecord
from retention.purge import retention_purge
from subscriptions.models import Plan, Subscription
from tests.accounts.factories import OrganisationFactory
from tests.subscriptions.factories import SubscriptionFactory
from usage.partitions import ingest_retention, partitions_ensure

NOW = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)  # a Friday
SECOND = timedelta(seconds=1)


def tier(organisation_id: int, table: str = "usage_syncinfo") -> int:
    """The retention tier the ingest writes for the organisation now."""
    subscription = (
        Subscription.objects.select_related("plan").filter(organisation_id=organisation_id).first()
    )
    return ingest_retention(subscription).days(table)


def add_sync_info(organisation_id: int, moments: list[datetime], *, days: int | None = None):
    """Rows at `moments`, in the tier the ingest would write now (or tier `days`)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at, retention_days) "
            "SELECT %s, 1, 1, 1, 'r-' || n, 'success', 'outbound', t, %s "
            "FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(t, n)",
            [organisation_id, days or tier(organisation_id), moments],
        )


def add_sync_info_series(organisation_id: int, *, newest: datetime, count: int) -> None:
    """`count` rows one minute apart, the newest at `newest`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at, retention_days) "
            "SELECT %s, 1, 1, g, 'r-' || g, 'success', 'outbound', "
            "%s - (g - 1) * interval '1 min', %s FROM generate_series(1, %s) g",
            [organisation_id, newest, tier(organisation_id), count],
        )


def add_snapshots(organisation_id: int, moments: list[datetime]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_snapshot (sync_info_id, organisation_id, synced_at, payload, "
            "retention_days) "
            "SELECT %s * 1000 + n, %s, t, '{}'::jsonb, %s "
            "FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(t, n)",
            [
                organisation_id,
                organisation_id,
                tier(organisation_id, "usage_snapshot"),
                moments,
            ],
        )


def tiers(table: str, organisation_id: int) -> list[tuple[datetime, int]]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT synced_at, retention_days FROM {table} "  # noqa: S608
            "WHERE organisation_id = %s ORDER BY synced_at",
            [organisation_id],
        )
        return cursor.fetchall()


def moments(table: str, organisation_id: int) -> list[datetime]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT synced_at FROM {table} WHERE organisation_id = %s ORDER BY synced_at",  # noqa: S608
            [organisation_id],
        )
        return [row[0] for row in cursor.fetchall()]


def count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
        return cursor.fetchone()[0]


def drop_tier_tables() -> None:
    """Every tier table, week and detached leftover (committed by transactional tests)."""
    with connection.cursor() as cursor:
        # Dropping a tier table drops its weeks and default; leftovers go by name.
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
            "AND (relname ~ '^usage_(syncinfo|snapshot)_r[0-9]+$' "
            "OR (relname ~ '^usage_(syncinfo|snapshot)_r[0-9]+_' AND relkind = 'r' "
            "AND NOT relispartition))"
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f"DROP TABLE {name}")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("code", "sync_days", "snapshot_days"),
    [("standard", 30, 7), ("professional", 90, 30), ("enterprise", 365, 90)],
)
def test_each_plan_keeps_exactly_its_retention(code, sync_days, snapshot_days):
    partitions_ensure(now=NOW)
    subscription = SubscriptionFactory(plan=Plan.objects.get(code=code))
    assert subscription.plan.sync_info_retention_days == sync_days
    assert subscription.plan.snapshot_retention_days == snapshot_days
    org = subscription.organisation
    sync_cutoff = NOW - timedelta(days=sync_days)
    snap_cutoff = NOW - timedelta(days=snapshot_days)
    add_sync_info(org.pk, [sync_cutoff - SECOND, sync_cutoff + SECOND, NOW])
    add_snapshots(org.pk, [snap_cutoff - SECOND, snap_cutoff + SECOND])

    result = retention_purge(now=NOW)

    assert moments("usage_syncinfo", org.pk) == [sync_cutoff + SECOND, NOW]
    assert moments("usage_snapshot", org.pk) == [snap_cutoff + SECOND]
    assert result["sync_info"] == 1
    assert result["snapshots"] == 1
    assert result["organisations"] == 1
    record = DeletionRecord.objects.get(organisation=org)
    assert record.kind == DeletionRecord.Kind.RETENTION
    assert record.counts == {"sync_info": 1, "snapshots": 1}
    assert record.organisation_label == org.name


@pytest.mark.django_db
def test_no_subscription_gets_the_shortest_retention_and_ended_keeps_its_plan():
    partitions_ensure(now=NOW)
    lone = OrganisationFactory()
    ended = SubscriptionFactory(
        plan=Plan.objects.get(code="professional"),
        status=Subscription.Status.ENDED,
        ended_at=NOW - timedelta(days=40),
    ).organisation
    # Inside the tiers' boundary weeks, so deleted row by row and counted per organisation
    # (older rows would go with whole weeks, counted in the run's partition record).
    add_sync_info(lone.pk, [NOW - timedelta(days=31), NOW - timedelta(days=20)])
    add_snapshots(lone.pk, [NOW - timedelta(days=8), NOW - timedelta(days=5)])
    add_sync_info(ended.pk, [NOW - timedelta(days=60), NOW - timedelta(days=20)])
    add_snapshots(ended.pk, [NOW - timedelta(days=20), NOW - timedelta(days=5)])

    retention_purge(now=NOW)

    # Without a subscription: Standard's 30 / 7 days, the shortest of the catalogue.
    assert tier(lone.pk) == 30
    assert tier(lone.pk, "usage_snapshot") == 7
    assert moments("usage_syncinfo", lone.pk) == [NOW - timedelta(days=20)]
    assert moments("usage_snapshot", lone.pk) == [NOW - timedelta(days=5)]
    # Ended Professional: still 90 / 30 days.
    assert moments("usage_syncinfo", ended.pk) == [
        NOW - timedelta(days=60),
        NOW - timedelta(days=20),
    ]
    assert len(moments("usage_snapshot", ended.pk)) == 2
    assert DeletionRecord.objects.get(organisation=lone).counts == {
        "sync_info": 1,
        "snapshots": 1,
    }
    assert not DeletionRecord.objects.filter(organisation=ended).exists()


def exists(relation: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [relation])
        return cursor.fetchone()[0] is not None


def blocks(prefix: str, *starts: str) -> set[str]:
    return {f"{prefix}_d{start}" for start in starts}


@pytest.mark.django_db
def test_whole_blocks_past_their_tier_are_dropped_and_counted():
    # Blocks from 30 days earlier too, so some end before tonight's cutoffs.
    partitions_ensure(now=NOW - timedelta(days=30))
    partitions_ensure(now=NOW)
    org = SubscriptionFactory(plan=Plan.objects.get(code="enterprise")).organisation
    # Sync Info, tier 365 in 4-week blocks: cutoff 2025-11-27 02:30 lies in the block of
    # 2025-11-03; the block of 2025-10-06 ends before it.
    add_sync_info_series(org.pk, newest=datetime(2025, 11, 2, 23, 0, tzinfo=UTC), count=100)
    add_sync_info(org.pk, [datetime(2025, 11, 26, tzinfo=UTC), datetime(2025, 12, 1, tzinfo=UTC)])
    # Older than the tier's first block: in the tier's default partition, dropped whole too.
    add_sync_info(org.pk, [datetime(2025, 10, 1, tzinfo=UTC), datetime(2025, 10, 2, tzinfo=UTC)])
    # Snapshots, tier 90 in weeks: cutoff Saturday 2026-08-29 02:30; the week of 2026-08-17
    # ends before it.
    add_snapshots(org.pk, [datetime(2026, 8, d, tzinfo=UTC) for d in (18, 19, 20)])
    add_snapshots(org.pk, [datetime(2026, 9, 1, tzinfo=UTC)])
    assert exists("usage_syncinfo_r365_d20251006")
    assert exists("usage_syncinfo_r365_default")

    result = retention_purge(now=NOW)

    with_rows = {
        "usage_syncinfo_r365_d20251006",
        "usage_syncinfo_r365_expired",  # the tier's default, swapped for an empty one
        "usage_snapshot_r90_d20260817",
    }
    # Empty blocks past their tier's cutoff go too: partitions_ensure never makes them again.
    weeks_30 = ("20260928", "20261005", "20261012", "20261019")
    weeks_90 = ("20260727", "20260803", "20260810", "20260817")
    empty = (
        blocks("usage_syncinfo_r30", *weeks_30)
        | blocks("usage_syncinfo_r90", *weeks_90)
        | blocks("usage_snapshot_r7", "20261019", "20261026", "20261102", "20261109")
        | blocks("usage_snapshot_r30", *weeks_30)
        | blocks("usage_snapshot_r90", *weeks_90[:3])
    )
    assert set(result["partitions_dropped"]) == with_rows | empty
    assert not any(exists(name) for name in with_rows | empty)
    assert exists("usage_syncinfo_r365_d20251103")  # holds the cutoff: rows deleted by row
    assert exists("usage_syncinfo_r365_default")
    assert exists("usage_snapshot_r90_d20260824")
    # 100 + 2 rows by the drops + 1 (2025-11-26) deleted by row; 3 snapshots by the drop.
    assert result["sync_info"] == 103
    assert result["snapshots"] == 3
    assert moments("usage_syncinfo", org.pk) == [datetime(2025, 12, 1, tzinfo=UTC)]
    assert moments("usage_snapshot", org.pk) == [datetime(2026, 9, 1, tzinfo=UTC)]
    dropped = DeletionRecord.objects.get(organisation__isnull=True)
    assert dropped.kind == DeletionRecord.Kind.RETENTION
    assert dropped.counts == {"sync_info": 102, "snapshots": 3}
    for name in with_rows:
        assert name in dropped.detail
    assert "usage_syncinfo_r30_d20260928" not in dropped.detail
    assert DeletionRecord.objects.get(organisation=org).counts == {
        "sync_info": 1,
        "snapshots": 0,
    }

    again = retention_purge(now=NOW)
    assert (again["sync_info"], again["snapshots"], again["partitions_dropped"]) == (0, 0, [])
    assert DeletionRecord.objects.count() == 2
    assert partitions_ensure(now=NOW) == 0


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_interrupted_run_is_finished_by_the_next_without_double_counting(
    monkeypatch, tier_tables_dropped
):
    partitions_ensure(now=NOW)
    orgs = [SubscriptionFactory().organisation for _ in range(2)]  # Standard: 30 days
    old = NOW - timedelta(days=31)
    for org in orgs:
        add_sync_info_series(org.pk, newest=old, count=25)
        add_sync_info_series(org.pk, newest=NOW, count=5)
        add_snapshots(org.pk, [NOW - timedelta(days=8), NOW - timedelta(days=1)])
    real = purge._delete_batch
    calls = []

    def crash_after_first_batch(*args, **kwargs):
        if calls:
            raise RuntimeError("killed")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(purge, "_delete_batch", crash_after_first_batch)
    with pytest.raises(RuntimeError, match="killed"):
        retention_purge(now=NOW, batch_size=10)
    assert count("usage_syncinfo") == 60 - 10  # the first batch committed
    # The tier's 10 oldest rows: the same 5 instants of both organisations, each counted.
    assert sorted(DeletionRecord.objects.values_list("organisation_id", "counts")) == [
        (orgs[0].pk, {"sync_info": 5, "snapshots": 0}),
        (orgs[1].pk, {"sync_info": 5, "snapshots": 0}),
    ]

    monkeypatch.setattr(purge, "_delete_batch", real)
    result = retention_purge(now=NOW, batch_size=10)

    assert result["sync_info"] == 40
    assert result["snapshots"] == 2
    for org in orgs:
        assert moments("usage_syncinfo", org.pk) == [
            NOW - timedelta(minutes=m) for m in range(4, -1, -1)
        ]
        assert moments("usage_snapshot", org.pk) == [NOW - timedelta(days=1)]
    records = list(DeletionRecord.objects.filter(kind="retention"))
    assert sum(r.counts["sync_info"] for r in records) == 50
    assert sum(r.counts["snapshots"] for r in records) == 2
    # The lock was released by the crashed run: a third run works and finds nothing.
    assert retention_purge(now=NOW)["skipped"] is False


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_concurrent_run_returns_at_once_and_one_run_does_the_work(
    monkeypatch, tier_tables_dropped
):
    partitions_ensure(now=NOW)
    org = SubscriptionFactory().organisation
    add_sync_info_series(org.pk, newest=NOW - timedelta(days=31), count=30)
    real = purge._delete_batch
    inside = threading.Event()
    release = threading.Event()

    def slow(*args, **kwargs):
        inside.set()
        assert release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(purge, "_delete_batch", slow)
    results = {}

    def run(name):
        try:
            results[name] = retention_purge(now=NOW, batch_size=10)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc
        finally:
            connection.close()

    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    second.join(10)
    assert not second.is_alive()
    release.set()
    first.join(10)

    assert results["second"]["skipped"] is True
    assert "another retention purge is running" in results["second"]["reason"]
    assert results["first"]["skipped"] is False
    assert results["first"]["sync_info"] == 30
    assert count("usage_syncinfo") == 0
    [record] = DeletionRecord.objects.all()
    assert record.counts == {"sync_info": 30, "snapshots": 0}


@pytest.mark.django_db
def test_the_nightly_job_prints_the_totals():
    partitions_ensure(now=NOW)
    org = SubscriptionFactory().organisation
    add_sync_info(org.pk, [NOW - timedelta(days=40), NOW - timedelta(days=31), NOW])
    line = run_job("retention_purge", now=NOW)
    assert line.startswith("2 Sync Info row(s) and 0 snapshot(s) deleted for 1 organisation(s)")


@pytest.mark.django_db
def test_rows_sharing_one_instant_beyond_a_batch_are_all_deleted():
    partitions_ensure(now=NOW)
    org = SubscriptionFactory().organisation
    old = NOW - timedelta(days=31)
    add_sync_info(org.pk, [old] * 25 + [old + SECOND] * 3 + [NOW])
    result = retention_purge(now=NOW, batch_size=10)
    assert result["sync_info"] == 28
    assert moments("usage_syncinfo", org.pk) == [NOW]
