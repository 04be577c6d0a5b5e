"""Retention purge benchmark: 10,000,000 Sync Info rows over 13 months.

Organisations on all three plans (Standard 30 days, Professional 90, Enterprise 365) share the
rows evenly, spread over the 13 months up to NOW, each row in its organisation's retention
tier as the ingest writes it. Prints: the load time; `retention_purge`'s time and what it
did; on a non-partitioned copy of the same rows (same primary key and organisation index), one
plain `DELETE ... WHERE <the same per-plan conditions>`, timed; that both removed exactly the
same rows (same count, and the same ids left); the ratio of the two (target: purge at least 5x
faster); and, during each, the latency of (a) the Sync Info page's query (one organisation,
newest 50, on the table being purged) every 100 ms from another connection and (b) a 50-record
batch posted to the ingestion API (POST /api/v1/sync-info through Django's test client, for
an organisation of its own) every 100 ms from another thread.

Runs against a scratch database `billing_bench_purge` on the project-local Postgres (created
and dropped here):  make services-start && source scripts/env.sh &&
DEBUG=1 python bench/purge.py [--rows 10000000] [--organisations 30]
"""

import argparse
import itertools
import json
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")
os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"

DATABASE = "billing_bench_purge"
base_url = os.environ.get("DATABASE_URL", "postgres://portal@127.0.0.1:55432/billing_portal")
parts = urlsplit(base_url)
BENCH_DSN = urlunsplit(parts._replace(path=f"/{DATABASE}"))
os.environ["DATABASE_URL"] = BENCH_DSN

import django  # noqa: E402
import psycopg  # noqa: E402

ADMIN_DSN = urlunsplit(parts._replace(path="/postgres"))
with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
    admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    admin.execute(f"CREATE DATABASE {DATABASE}")

django.setup()

from django.conf import settings  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

# Production runs with DEBUG off; with it on, Django keeps every query in memory. (The test
# environment lets Django's test client in; the probe's API calls go through it.)
setup_test_environment(debug=False)
settings.DEBUG = False

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

call_command("migrate", verbosity=0)

from accounts.audit import SYSTEM  # noqa: E402
from accounts.models import Organisation  # noqa: E402
from retention.models import DeletionRecord  # noqa: E402
from retention.purge import retention_purge, summary  # noqa: E402
from subscriptions.models import Environment, Plan, ProcessFlow, Subscription  # noqa: E402
from usage.partitions import partitions_ensure  # noqa: E402
from usage.services import api_key_create  # noqa: E402

NOW = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)
SPAN = timedelta(days=395)  # 13 months of rows up to NOW
PLANS = ("standard", "professional", "enterprise")
BATCHES = itertools.count()  # the ingestion probes' Idempotency-Keys
PROBE_SQL = (
    "SELECT id, record_key, status, synced_at FROM {table} WHERE organisation_id = %s "
    "ORDER BY synced_at DESC, id DESC LIMIT 50"
)


def organisation_create(n, code: str) -> tuple[Organisation, Environment, ProcessFlow]:
    organisation = Organisation.objects.create(
        name=f"Purge bench {n}", slug=f"purge-bench-{n}", primary_email=f"b{n}@bench.test"
    )
    Subscription.objects.create(
        organisation=organisation,
        plan=Plan.objects.get(code=code),
        billing_cycle="monthly",
        status="active",
        currency="USD",
        anchor_at=NOW - timedelta(days=20),
        current_period_start=NOW - timedelta(days=20),
        current_period_end=NOW + timedelta(days=10),
        current_price=0,
    )
    environment = Environment.objects.create(organisation=organisation, name="Production")
    flow = ProcessFlow.objects.create(
        organisation=organisation, environment=environment, name="Orders to SAP"
    )
    return organisation, environment, flow


def seed(rows: int, organisations: int) -> dict[str, list[int]]:
    partitions_ensure(now=NOW)
    by_plan: dict[str, list[int]] = {code: [] for code in PLANS}
    per_org = rows // organisations
    step = SPAN / per_org
    started = time.perf_counter()
    for n in range(organisations):
        code = PLANS[n % 3]
        organisation, environment, flow = organisation_create(n, code)
        by_plan[code].append(organisation.pk)
        # The tier the ingest writes: the plan's Sync Info retention.
        tier = Plan.objects.get(code=code).sync_info_retention_days
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
                "record_key, status, direction, synced_at, message, retention_days) "
                "SELECT %s, %s, %s, g / 1000, 'SO-' || g, 'success', 'outbound', "
                "%s - g * %s, 'Created sales order', %s FROM generate_series(1, %s) g",
                [organisation.pk, environment.pk, flow.pk, NOW, step, tier, per_org],
            )
        done = (n + 1) * per_org
        elapsed = time.perf_counter() - started
        print(f"  loaded {done:>11,} rows in {elapsed:6.1f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE usage_syncinfo")
    return by_plan


def make_copy() -> float:
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE syncinfo_copy AS SELECT * FROM usage_syncinfo")
        cursor.execute("ALTER TABLE syncinfo_copy ADD PRIMARY KEY (synced_at, id)")
        cursor.execute(
            "CREATE INDEX syncinfo_copy_org_time ON syncinfo_copy "
            "(organisation_id, synced_at DESC, id DESC)"
        )
        cursor.execute("VACUUM ANALYZE syncinfo_copy")
    return time.perf_counter() - started


class Probe(threading.Thread):
    """Calls `work` every 100 ms on its own thread (and database connection), timing each."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work = work
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failure: BaseException | None = None

    def run(self):
        try:
            while not self.stop.is_set():
                started = time.perf_counter()
                self.work()
                self.latencies.append(time.perf_counter() - started)
                self.stop.wait(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.failure = exc
        finally:
            connection.close()

    def report(self) -> str:
        if self.failure is not None:
            return f"FAILED: {self.failure!r}"
        lat = sorted(self.latencies)
        if not lat:
            return "no probes"
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"{len(lat)} calls, median {statistics.median(lat) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms"
        )


def page_probe(table: str, organisation_id: int) -> Probe:
    """The Sync Info page's query (newest 50 of one organisation) on `table`."""
    sql = PROBE_SQL.format(table=table)

    def work():
        with connection.cursor() as cursor:
            cursor.execute(sql, [organisation_id])
            assert cursor.fetchall()

    return Probe(work)


def ingest_probe(plain_key: str, flow: ProcessFlow) -> Probe:
    """A 50-record batch through POST /api/v1/sync-info, each with its own Idempotency-Key."""
    client = Client()

    def work():
        n = next(BATCHES)
        now = timezone.now()
        records = [
            {
                "flow_id": str(flow.public_id),
                "record_key": f"PROBE-{n}-{i}",
                "status": "success",
                "direction": "outbound",
                "synced_at": (now - timedelta(seconds=i)).isoformat(),
            }
            for i in range(50)
        ]
        response = client.post(
            "/api/v1/sync-info",
            data=json.dumps({"records": records}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {plain_key}",
            HTTP_IDEMPOTENCY_KEY=f"probe-{n}",
        )
        assert response.status_code == 201, response.content

    return Probe(work)


def timed_with_probes(probes: list[Probe], work):
    for probe in probes:
        probe.start()
    time.sleep(0.3)
    started = time.perf_counter()
    result = work()
    elapsed = time.perf_counter() - started
    time.sleep(0.2)
    for probe in probes:
        probe.stop.set()
    for probe in probes:
        probe.join()
    return result, elapsed


def plain_delete(by_plan: dict[str, list[int]]) -> int:
    conditions = []
    params: list = []
    for code, ids in by_plan.items():
        days = Plan.objects.get(code=code).sync_info_retention_days
        conditions.append("(organisation_id = ANY(%s) AND synced_at < %s)")
        params += [ids, NOW - timedelta(days=days)]
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM syncinfo_copy WHERE " + " OR ".join(conditions),  # noqa: S608
            params,
        )
        return cursor.rowcount


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--organisations", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=50_000)
    args = parser.parse_args()

    print(f"Retention purge benchmark, {DATABASE}, {os.cpu_count()} cores", flush=True)
    started = time.perf_counter()
    by_plan = seed(args.rows, args.organisations)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_syncinfo")
        (total,) = cursor.fetchone()
    print(
        f"  seeded {total:,} rows, {args.organisations} organisations "
        f"({', '.join(f'{len(v)} {k}' for k, v in by_plan.items())}), 13 months, "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    print(f"  copy (non-partitioned, PK + org index) made in {make_copy():.1f} s", flush=True)
    # The ingestion probe's organisation: rows of its own, left out of the comparison.
    _, probe_environment, probe_flow = organisation_create("probe", "standard")
    _, plain_key = api_key_create(
        environment=probe_environment, actor=SYSTEM, name="probe", now=timezone.now()
    )

    probe_org = by_plan["standard"][0]
    page, ingest = page_probe("syncinfo_copy", probe_org), ingest_probe(plain_key, probe_flow)
    deleted_plain, plain_seconds = timed_with_probes([page, ingest], lambda: plain_delete(by_plan))
    print(
        f"  plain DELETE on the copy: {deleted_plain:,} rows in {plain_seconds:.2f} s", flush=True
    )
    print(f"    Sync Info page query meanwhile: {page.report()}", flush=True)
    print(f"    ingestion API meanwhile:        {ingest.report()}", flush=True)

    page, ingest = page_probe("usage_syncinfo", probe_org), ingest_probe(plain_key, probe_flow)
    result, purge_seconds = timed_with_probes(
        [page, ingest], lambda: retention_purge(now=NOW, batch_size=args.batch_size)
    )
    print(f"  retention_purge: {summary(result)}", flush=True)
    print(f"  retention_purge: {result['sync_info']:,} rows in {purge_seconds:.2f} s", flush=True)
    print(f"    Sync Info page query meanwhile: {page.report()}", flush=True)
    print(f"    ingestion API meanwhile:        {ingest.report()}", flush=True)
    assert page.failure is None
    assert ingest.failure is None

    assert result["sync_info"] == deleted_plain, (result["sync_info"], deleted_plain)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM usage_syncinfo WHERE organisation_id <> %s",
            [probe_flow.organisation_id],
        )
        (left_partitioned,) = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM syncinfo_copy")
        (left_copy,) = cursor.fetchone()
        # Not only as many: the very same rows are left (by id, both ways).
        cursor.execute(
            "SELECT count(*) FROM usage_syncinfo s FULL JOIN syncinfo_copy c ON c.id = s.id "
            "WHERE (s.id IS NULL OR c.id IS NULL) AND s.organisation_id IS DISTINCT FROM %s",
            [probe_flow.organisation_id],
        )
        (different,) = cursor.fetchone()
    assert left_partitioned == left_copy, (left_partitioned, left_copy)
    assert different == 0, different
    print(
        f"  rows left: {left_partitioned:,} in both, the same ids; DeletionRecords written: "
        f"{DeletionRecord.objects.count()}",
        flush=True,
    )
    print(
        f"  ratio: plain DELETE {plain_seconds:.2f} s / purge {purge_seconds:.2f} s = "
        f"{plain_seconds / purge_seconds:.2f}x (target >= 5x)",
        flush=True,
    )
    # For context, not in the ratio: the purge's time includes giving the space back (the
    # dropped files, at DROP's commit); the plain DELETE leaves that to a later VACUUM.
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM syncinfo_copy")
    print(
        f"  context: VACUUM reclaiming the plain DELETE's rows afterwards: "
        f"{time.perf_counter() - started:.2f} s (not in the ratio)",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    finally:
        connection.close()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
