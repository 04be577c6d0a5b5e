"""Sync Info and snapshot partitions by retention tier and block: the purge drops whole blocks."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from core.jobs import run_job
from subscriptions.models import Plan
from usage.partitions import block_width, partitions_ensure

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)  # a Friday


def partitions(parent: str) -> dict[str, str]:
    """Child name -> bound, of a partitioned table."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [parent],
        )
        return dict(cursor.fetchall())


def leaves(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_partition_tree(%s::regclass) WHERE isleaf", [table])
        return cursor.fetchone()[0]


def home(table: str, retention_days: int) -> list[str]:
    """The partitions holding the table's rows of a tier."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT tableoid::regclass::text FROM {table} "  # noqa: S608
            "WHERE retention_days = %s ORDER BY synced_at",
            [retention_days],
        )
        return [row[0] for row in cursor.fetchall()]


def insert(retention_days: int, synced_at: datetime) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at, retention_days) "
            "VALUES (1, 1, 1, 1, 'r', 'success', 'outbound', %s, %s)",
            [synced_at, retention_days],
        )


def test_one_tier_per_retention_of_the_catalogue_in_blocks_of_about_a_twelfth():
    created = partitions_ensure(now=NOW)

    assert sorted(partitions("usage_syncinfo")) == [
        "usage_syncinfo_default",
        "usage_syncinfo_r30",
        "usage_syncinfo_r365",
        "usage_syncinfo_r90",
    ]
    assert partitions("usage_syncinfo")["usage_syncinfo_r90"] == "FOR VALUES IN ('90')"
    # Snapshots: each plan's snapshot retention, capped by its Sync Info retention.
    assert sorted(partitions("usage_snapshot")) == [
        "usage_snapshot_default",
        "usage_snapshot_r30",
        "usage_snapshot_r7",
        "usage_snapshot_r90",
    ]
    assert block_width(30) == block_width(90) == timedelta(weeks=1)
    assert block_width(365) == timedelta(weeks=4)
    standard = partitions("usage_syncinfo_r30")
    # From the week holding now - 30 days (Wednesday 2026-10-28) to 4 weeks ahead.
    assert standard["usage_syncinfo_r30_d20261026"] == (
        "FOR VALUES FROM ('2026-10-26 00:00:00+00') TO ('2026-11-02 00:00:00+00')"
    )
    assert sorted(standard)[0] == "usage_syncinfo_r30_d20261026"
    assert sorted(standard)[-2] == "usage_syncinfo_r30_d20261221"
    assert standard["usage_syncinfo_r30_default"] == "DEFAULT"
    enterprise = partitions("usage_syncinfo_r365")
    assert enterprise["usage_syncinfo_r365_d20251103"] == (
        "FOR VALUES FROM ('2025-11-03 00:00:00+00') TO ('2025-12-01 00:00:00+00')"
    )
    # 9 + 18 + 15 blocks and 3 defaults per tier, and the top default; snapshots 6 + 9 + 18.
    assert leaves("usage_syncinfo") == 46
    assert leaves("usage_snapshot") == 37
    assert created == 3 * 2 + 42 + 3 * 2 + 33
    assert partitions_ensure(now=NOW) == 0


def test_the_daily_job_adds_the_next_blocks_only():
    partitions_ensure(now=NOW)
    assert run_job("sync_info_partitions", now=NOW + timedelta(days=7)) == (
        "6 partition(s) created"  # one week ahead in each weekly tier
    )


def test_a_new_retention_gets_its_tier_and_the_rows_written_before_move_in():
    partitions_ensure(now=NOW)
    custom = Plan.objects.get(code="standard")
    custom.pk = None
    custom.code, custom.rank = "custom", 99
    custom.sync_info_retention_days, custom.snapshot_retention_days = 180, 60
    custom.save()
    # Ingested for the new plan before the job ran: the top default partition.
    insert(180, NOW - timedelta(days=1))
    insert(180, NOW - timedelta(days=300))
    assert home("usage_syncinfo", 180) == ["usage_syncinfo_default", "usage_syncinfo_default"]

    partitions_ensure(now=NOW)

    assert block_width(180) == timedelta(weeks=2)
    assert home("usage_syncinfo", 180) == [
        "usage_syncinfo_r180_default",  # older than the tier's first block
        "usage_syncinfo_r180_d20261116",
    ]
    assert "usage_snapshot_r60" in partitions("usage_snapshot")


def test_a_block_whose_rows_already_sit_in_the_default_is_left_there(caplog):
    partitions_ensure(now=NOW)
    beyond = NOW + timedelta(days=40)  # past the blocks made ahead
    insert(30, beyond)
    assert home("usage_syncinfo", 30) == ["usage_syncinfo_r30_default"]

    partitions_ensure(now=NOW + timedelta(days=14))

    assert "usage_syncinfo_r30_d20270104" not in partitions("usage_syncinfo_r30")
    assert "usage_syncinfo_r30_d20261228" in partitions("usage_syncinfo_r30")
    assert "rows for usage_syncinfo_r30_d20270104 are in the tier's default" in caplog.text
    assert home("usage_syncinfo", 30) == ["usage_syncinfo_r30_default"]
