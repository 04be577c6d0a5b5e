"""The nightly retention purge of Sync Info and snapshots (issue 8 point 1)."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from billing_portal.jobs import run_job
from retention import purge
from retention.models import DeletionRecord
from retention.purge import retention_purge
from subscriptions.models import Plan, Subscription
from tests.factories import OrganisationFactory
from tests.subscriptions.factories import SubscriptionFactory
from usage.partitions import partitions_ensure

NOW = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def add_sync_info(organisation_id: int, moments: list[datetime]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at) "
            "SELECT %s, 1, 1, 1, 'r-' || n, 'success', 'outbound', t "
            "FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(t, n)",
            [organisation_id, moments],
        )


def add_sync_info_series(organisation_id: int, *, newest: datetime, count: int) -> None:
    """`count` rows one minute apart, the newest at `newest`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at) "
            "SELECT %s, 1, 1, g, 'r-' || g, 'success', 'outbound', %s - (g - 1) * interval '1 min' "
            "FROM generate_series(1, %s) g",
            [organisation_id, newest, count],
        )


def add_snapshots(organisation_id: int, moments: list[datetime]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_snapshot (sync_info_id, organisation_id, synced_at, payload) "
            "SELECT %s * 1000 + n, %s, t, '{}'::jsonb "
            "FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(t, n)",
            [organisation_id, organisation_id, moments],
        )


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


def exists(relation: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [relation])
        return cursor.fetchone()[0] is not None


@pytest.fixture
def truncate_usage():
    """Transactional tests: the flush does not know the unmanaged partitioned tables."""
    yield
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE usage_syncinfo, usage_snapshot")


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
    for org in (lone, ended):
        add_sync_info(org.pk, [NOW - timedelta(days=60), NOW - timedelta(days=20)])
        add_snapshots(org.pk, [NOW - timedelta(days=20), NOW - timedelta(days=5)])

    retention_purge(now=NOW)

    # Without a subscription: Standard's 30 / 7 days, the shortest of the catalogue.
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


@pytest.mark.django_db
def test_whole_partitions_past_every_retention_are_dropped_and_counted():
    partitions_ensure(now=NOW)
    org = SubscriptionFactory(plan=Plan.objects.get(code="enterprise")).organisation
    # Sync Info: longest retention 365 days -> cutoff 2025-11-27 02:30; October 2025 ends before.
    add_sync_info_series(org.pk, newest=datetime(2025, 10, 31, 23, 0, tzinfo=UTC), count=100)
    add_sync_info(org.pk, [datetime(2025, 11, 20, tzinfo=UTC), datetime(2025, 12, 1, tzinfo=UTC)])
    # Snapshots: longest retention 90 days -> cutoff 2026-08-29 02:30; July 2026 ends before.
    add_snapshots(org.pk, [datetime(2026, 7, d, tzinfo=UTC) for d in (1, 2, 3)])
    add_snapshots(org.pk, [datetime(2026, 9, 1, tzinfo=UTC)])
    assert exists("usage_syncinfo_y2025m10")

    result = retention_purge(now=NOW)

    assert not exists("usage_syncinfo_y2025m10")
    assert not exists("usage_snapshot_y2026m07")
    assert exists("usage_syncinfo_y2025m11")  # ends after the cutoff: rows deleted one by one
    assert exists("usage_snapshot_y2026m06")  # empty: left for partitions_ensure, not dropped
    assert set(result["partitions_dropped"]) == {
        "usage_syncinfo_y2025m10",
        "usage_snapshot_y2026m07",
    }
    # 100 rows by the drop + 1 (2025-11-20) deleted by row; 3 snapshots by the drop + 0.
    assert result["sync_info"] == 101
    assert result["snapshots"] == 3
    assert moments("usage_syncinfo", org.pk) == [datetime(2025, 12, 1, tzinfo=UTC)]
    assert moments("usage_snapshot", org.pk) == [datetime(2026, 9, 1, tzinfo=UTC)]
    dropped = DeletionRecord.objects.get(organisation__isnull=True)
    assert dropped.kind == DeletionRecord.Kind.RETENTION
    assert dropped.counts == {"sync_info": 100, "snapshots": 3}
    assert "usage_syncinfo_y2025m10" in dropped.detail
    assert "usage_snapshot_y2026m07" in dropped.detail
    assert DeletionRecord.objects.get(organisation=org).counts == {
        "sync_info": 1,
        "snapshots": 0,
    }

    again = retention_purge(now=NOW)
    assert (again["sync_info"], again["snapshots"], again["partitions_dropped"]) == (0, 0, [])
    assert DeletionRecord.objects.count() == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_interrupted_run_is_finished_by_the_next_without_double_counting(
    monkeypatch, truncate_usage
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
    [first] = DeletionRecord.objects.all()
    assert first.counts == {"sync_info": 10, "snapshots": 0}

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
def test_a_concurrent_run_returns_at_once_and_one_run_does_the_work(monkeypatch, truncate_usage):
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
