"""The retention purge over tier partitions, for speed: whole blocks dropped per
tier, plan changes, interrupted and busy runs."""

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.db import connection

from retention import purge
from retention.models import DeletionRecord
from retention.purge import retention_purge
from subscriptions.models import Plan
from tests.retention.test_purge import (
    NOW,
    SECOND,
    add_sync_info,
    count,
    exists,
    moments,
    tiers,
)
from tests.subscriptions.factories import SubscriptionFactory
from usage.partitions import partitions_ensure

STANDARD_CUTOFF = NOW - timedelta(days=30)  # Wednesday 2026-10-28 02:30


def subscribed(code: str):
    return SubscriptionFactory(plan=Plan.objects.get(code=code)).organisation


def attached(relation: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT relispartition FROM pg_class WHERE relname = %s", [relation])
        return cursor.fetchone()[0]


@pytest.fixture
def blocks_before_the_cutoffs():
    """Blocks from 30 days before NOW as well, so some end before NOW's cutoffs."""
    partitions_ensure(now=NOW - timedelta(days=30))
    partitions_ensure(now=NOW)


@pytest.mark.django_db
def test_a_standard_block_is_dropped_while_the_same_week_is_kept_for_enterprise(
    blocks_before_the_cutoffs,
):
    standard, enterprise = subscribed("standard"), subscribed("enterprise")
    week = [datetime(2026, 10, 20, 10, m, tzinfo=UTC) for m in range(5)]
    add_sync_info(standard.pk, week)
    add_sync_info(standard.pk, [STANDARD_CUTOFF - SECOND, STANDARD_CUTOFF + SECOND])
    add_sync_info(enterprise.pk, week)

    result = retention_purge(now=NOW)

    # The Standard tier's week of 2026-10-19 ends before its cutoff: dropped whole.
    assert "usage_syncinfo_r30_d20261019" in result["partitions_dropped"]
    assert not exists("usage_syncinfo_r30_d20261019")
    assert moments("usage_syncinfo", standard.pk) == [STANDARD_CUTOFF + SECOND]
    # The same days in the Enterprise tier's block are kept.
    assert exists("usage_syncinfo_r365_d20261005")
    assert moments("usage_syncinfo", enterprise.pk) == week
    assert result["sync_info"] == 6
    assert DeletionRecord.objects.get(organisation__isnull=True).counts == {
        "sync_info": 5,
        "snapshots": 0,
    }
    # The row of the boundary week, one second past the cutoff, deleted by row and counted.
    assert DeletionRecord.objects.get(organisation=standard).counts == {
        "sync_info": 1,
        "snapshots": 0,
    }
    assert not DeletionRecord.objects.filter(organisation=enterprise).exists()


@pytest.mark.django_db
def test_rows_of_an_upgraded_organisation_are_moved_to_its_tier_not_dropped_early(
    blocks_before_the_cutoffs,
):
    # Ingested while on Standard (tier 30, snapshots 7); the renewal then made it Enterprise.
    org = subscribed("enterprise")
    in_a_dropped_week = datetime(2026, 10, 20, tzinfo=UTC)
    before_the_tier_cutoff = datetime(2026, 10, 27, tzinfo=UTC)
    young = NOW - timedelta(days=29)
    past_enterprise_retention = datetime(2025, 11, 20, tzinfo=UTC)
    add_sync_info(
        org.pk,
        [past_enterprise_retention, in_a_dropped_week, before_the_tier_cutoff, young],
        days=30,
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_snapshot (sync_info_id, organisation_id, synced_at, payload, "
            "retention_days) VALUES (1, %s, %s, '{}', 7)",
            [org.pk, NOW - timedelta(days=10)],
        )

    result = retention_purge(now=NOW)

    # Rows the Standard tier would have dropped now sit in the Enterprise tier; the young one
    # stays until the Standard tier's cutoff reaches it.
    assert tiers("usage_syncinfo", org.pk) == [
        (in_a_dropped_week, 365),
        (before_the_tier_cutoff, 365),
        (young, 30),
    ]
    assert tiers("usage_snapshot", org.pk) == [(NOW - timedelta(days=10), 90)]
    assert not exists("usage_syncinfo_r30_d20261019")  # emptied by the move, then dropped
    # Only the row older than Enterprise's 365 days went (with the tier's default).
    assert result["sync_info"] == 1
    assert result["snapshots"] == 0
    assert "usage_syncinfo_r30_expired" in result["partitions_dropped"]

    # 40 days later the young row has passed the Standard tier's cutoff: moved, not lost.
    later = NOW + timedelta(days=40)
    partitions_ensure(now=later)
    assert retention_purge(now=later)["sync_info"] == 0
    assert tiers("usage_syncinfo", org.pk) == [
        (in_a_dropped_week, 365),
        (before_the_tier_cutoff, 365),
        (young, 365),
    ]


@pytest.mark.django_db
def test_rows_of_a_downgraded_organisation_go_at_its_new_retention(blocks_before_the_cutoffs):
    # Ingested while on Enterprise (365 / 90); since the renewal that switched it, Standard's
    # 30 / 7 days apply (the purge reads the subscription's current plan).
    org = subscribed("standard")
    add_sync_info(org.pk, [NOW - timedelta(days=d) for d in (60, 31, 10)], days=365)
    # A tier without a table (a retention no plan has any more): the top default partition.
    add_sync_info(org.pk, [NOW - timedelta(days=40), NOW - timedelta(days=20)], days=45)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_snapshot (sync_info_id, organisation_id, synced_at, payload, "
            "retention_days) VALUES (1, %s, %s, '{}', 90), (2, %s, %s, '{}', 90)",
            [org.pk, NOW - timedelta(days=8), org.pk, NOW - timedelta(days=6)],
        )

    result = retention_purge(now=NOW)

    assert moments("usage_syncinfo", org.pk) == [
        NOW - timedelta(days=20),
        NOW - timedelta(days=10),
    ]
    assert moments("usage_snapshot", org.pk) == [NOW - timedelta(days=6)]
    assert (result["sync_info"], result["snapshots"]) == (3, 1)
    assert DeletionRecord.objects.get(organisation=org).counts == {
        "sync_info": 3,
        "snapshots": 1,
    }
    assert exists("usage_syncinfo_r365_d20260907")  # Enterprise's block: not for dropping


@pytest.mark.django_db
def test_a_tier_default_holding_a_row_to_keep_is_not_dropped():
    partitions_ensure(now=NOW)
    org = subscribed("standard")
    expired = datetime(2026, 9, 1, tzinfo=UTC)  # before the tier's first block
    beyond_the_blocks = NOW + timedelta(days=40)
    add_sync_info(org.pk, [expired, beyond_the_blocks])

    result = retention_purge(now=NOW)

    assert moments("usage_syncinfo", org.pk) == [beyond_the_blocks]
    assert result["partitions_dropped"] == []
    assert result["sync_info"] == 1
    assert DeletionRecord.objects.get(organisation=org).counts == {
        "sync_info": 1,
        "snapshots": 0,
    }
    assert attached("usage_syncinfo_r30_default")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_runs_killed_after_a_detach_are_finished_by_the_next_with_exact_counts(
    monkeypatch, tier_tables_dropped, blocks_before_the_cutoffs
):
    org = subscribed("standard")
    add_sync_info(org.pk, [datetime(2026, 10, 13, 1, m, tzinfo=UTC) for m in range(10)])
    add_sync_info(org.pk, [datetime(2026, 10, 20, 1, m, tzinfo=UTC) for m in range(7)])
    add_sync_info(org.pk, [datetime(2026, 9, 1, 1, m, tzinfo=UTC) for m in range(3)])  # default
    add_sync_info(org.pk, [datetime(2026, 10, 27, tzinfo=UTC), STANDARD_CUTOFF - SECOND, NOW])
    real_detach, real_swap = purge._detach_block, purge._swap_default

    def detach_then_die(table, part):
        done = real_detach(table, part)
        if part.name == "usage_syncinfo_r30_d20261012":
            raise RuntimeError("killed")
        return done

    def swap_then_die(table, part, cutoff):
        name = real_swap(table, part, cutoff)
        if name is not None:
            raise RuntimeError("killed")
        return name

    monkeypatch.setattr(purge, "_detach_block", detach_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        retention_purge(now=NOW)
    # Detached, not dropped, not counted yet: its rows are out of the table.
    assert exists("usage_syncinfo_r30_d20261012")
    assert not attached("usage_syncinfo_r30_d20261012")
    assert count("usage_syncinfo") == 23 - 10
    assert not DeletionRecord.objects.exists()

    monkeypatch.setattr(purge, "_detach_block", real_detach)
    monkeypatch.setattr(purge, "_swap_default", swap_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        retention_purge(now=NOW)
    # The leftover and the next week went; the default was swapped but not dropped yet.
    assert not exists("usage_syncinfo_r30_d20261012")
    assert not attached("usage_syncinfo_r30_expired")
    assert attached("usage_syncinfo_r30_default")
    assert DeletionRecord.objects.get().counts == {"sync_info": 17, "snapshots": 0}

    monkeypatch.setattr(purge, "_swap_default", real_swap)
    result = retention_purge(now=NOW)

    standard_tier = [n for n in result["partitions_dropped"] if "_syncinfo_r30_" in n]
    assert standard_tier == ["usage_syncinfo_r30_expired"]
    assert result["sync_info"] == 3 + 2  # the default's rows, then the two in the boundary week
    assert not exists("usage_syncinfo_r30_expired")
    assert moments("usage_syncinfo", org.pk) == [NOW]
    records = DeletionRecord.objects.filter(kind="retention")
    assert sum(r.counts["sync_info"] for r in records) == 22
    assert DeletionRecord.objects.get(organisation=org).counts == {
        "sync_info": 2,
        "snapshots": 0,
    }
    again = retention_purge(now=NOW)
    assert (again["sync_info"], again["partitions_dropped"]) == (0, [])


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_block_in_use_is_left_for_tomorrow_and_its_rows_deleted_by_row(
    monkeypatch, tier_tables_dropped, blocks_before_the_cutoffs
):
    org = subscribed("standard")
    add_sync_info(org.pk, [datetime(2026, 10, 13, 1, m, tzinfo=UTC) for m in range(5)])
    monkeypatch.setattr(purge, "DETACH_ATTEMPTS", 2)
    monkeypatch.setattr(purge, "DETACH_PAUSE", 0)
    settings = connection.settings_dict
    reader = psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        host=settings["HOST"],
        port=settings["PORT"],
        password=settings["PASSWORD"] or None,
    )
    try:
        # A long read (an export, say) holds the block: the DETACH must not wait it out.
        reader.execute("SELECT count(*) FROM usage_syncinfo_r30_d20261012").fetchone()
        result = retention_purge(now=NOW)
    finally:
        reader.close()

    assert "usage_syncinfo_r30_d20261012" not in result["partitions_dropped"]
    assert attached("usage_syncinfo_r30_d20261012")
    assert result["sync_info"] == 5
    assert moments("usage_syncinfo", org.pk) == []
    assert DeletionRecord.objects.get(organisation=org).counts == {
        "sync_info": 5,
        "snapshots": 0,
    }
    # Tomorrow nobody holds it: the now empty block goes.
    assert "usage_syncinfo_r30_d20261012" in retention_purge(now=NOW)["partitions_dropped"]
