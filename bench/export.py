"""Sync Info export benchmark: 1,000,000 rows of one organisation as CSV.

Prints, for exports of 250,000 / 500,000 / 1,000,000 rows: (a) the app's export view through
Django's test client, streaming the response (rows, seconds, rows/s) and the app process's
memory while it runs (growth of the peak RSS, and tracemalloc's peak of Python allocations in
a second, untimed pass); (b) `psql -c "\\copy (SELECT ...) TO STDOUT CSV"` into /dev/null for
the same SELECT, timed; and the ratio of the two (target: the app at least 50% of psql; memory
flat whatever the size).

Runs against a scratch database `billing_bench_export` on the project-local Postgres (created
and dropped here):  make services-start && source scripts/env.sh &&
DEBUG=1 python bench/export.py [--rows 1000000]
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")
os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"

DATABASE = "billing_bench_export"
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

# Production runs with DEBUG off; with it on, Django keeps every query in memory.
settings.DEBUG = False

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

call_command("migrate", verbosity=0)

from accounts.models import Membership, Organisation, User  # noqa: E402
from subscriptions.models import Environment, ProcessFlow  # noqa: E402
from usage.export import sync_info_select  # noqa: E402
from usage.partitions import ingest_retention, partitions_ensure  # noqa: E402

LAST_DAY = date(2026, 11, 20)
DAYS = 100  # rows spread evenly over the 100 days up to LAST_DAY (UTC, the org's zone)


def seed(rows: int) -> tuple[Organisation, User]:
    organisation = Organisation.objects.create(
        name="Export Bench", slug="export-bench", primary_email="bench@export.test"
    )
    user = User.objects.create_user(email="member@export.test", password="x")  # noqa: S106
    Membership.objects.create(organisation=organisation, user=user, role="member")
    environment = Environment.objects.create(organisation=organisation, name="Production")
    flows = [
        ProcessFlow.objects.create(
            organisation=organisation, environment=environment, name=f"Orders {n} to SAP"
        )
        for n in range(5)
    ]
    end = datetime(LAST_DAY.year, LAST_DAY.month, LAST_DAY.day, tzinfo=UTC) + timedelta(days=1)
    partitions_ensure(now=end)
    step = timedelta(days=DAYS) / rows
    # The retention tier the ingest writes for it (no subscription: the catalogue's shortest).
    tier = ingest_retention(None).days("usage_syncinfo")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        # Every 50th message holds a comma and quotes, so quoting is part of the work.
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at, message, retention_days) "
            "SELECT %s, %s, (%s::bigint[])[1 + g %% 5], g / 1000, 'SO-' || lpad(g::text, 8, '0'), "
            "CASE WHEN g %% 20 = 0 THEN 'failed' ELSE 'success' END, "
            "CASE WHEN g %% 3 = 0 THEN 'inbound' ELSE 'outbound' END, "
            "%s - g * %s, "
            "CASE WHEN g %% 50 = 0 THEN 'Customer \"ACME, Inc.\" not found' "
            "ELSE 'Created sales order ' || g END, %s "
            "FROM generate_series(1, %s) g",
            [organisation.pk, environment.pk, [f.pk for f in flows], end, step, tier, rows],
        )
        cursor.execute("ANALYZE usage_syncinfo")
    elapsed = time.perf_counter() - started
    print(f"  seeded {rows:,} rows over {DAYS} days in {elapsed:.1f} s")
    return organisation, user


def app_export(client: Client, url: str) -> tuple[int, float]:
    started = time.perf_counter()
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    lines = 0
    for chunk in response.streaming_content:
        lines += chunk.count(b"\r\n")
    response.close()
    return lines - 1, time.perf_counter() - started


def psql_export(select: str, params: list) -> float:
    with psycopg.connect(BENCH_DSN) as conn:
        literal = psycopg.ClientCursor(conn).mogrify(select, params)
    one_line = " ".join(literal.split())
    command = [
        shutil.which("psql") or "psql",
        "-X",
        "-q",
        "-d",
        BENCH_DSN,
        "-c",
        f"\\copy ({one_line}) TO STDOUT WITH (FORMAT csv, HEADER)",
    ]
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        subprocess.run(command, stdout=sink, check=True)  # noqa: S603
    return time.perf_counter() - started


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()

    print(f"Sync Info export benchmark, {DATABASE}, {os.cpu_count()} cores")
    organisation, user = seed(args.rows)
    client = Client()
    client.force_login(user)
    base = f"/o/{organisation.slug}/sync-info/export/?export=csv"

    with connection.cursor() as cursor:
        select, params = sync_info_select(
            organisation_id=organisation.pk,
            start=datetime(2026, 8, 13, tzinfo=UTC),
            end=datetime(2026, 11, 21, tzinfo=UTC),
        )
        cursor.execute(f"EXPLAIN {select}", params)
        plan = [row[0] for row in cursor.fetchall()]
    print("  plan of the export SELECT (whole range):")
    for line in plan[:8]:
        print(f"    {line}")

    # Warm up: imports, the first request's session write, Postgres caches.
    first = LAST_DAY - timedelta(days=DAYS - 1)
    app_export(client, f"{base}&date_from={first}&date_to={LAST_DAY}")
    baseline_rss = rss_mb()
    print(f"  app process peak RSS before the measured exports: {baseline_rss:.1f} MB")
    results = []
    for share in (4, 2, 1):
        days = DAYS // share
        date_from = LAST_DAY - timedelta(days=days - 1)
        url = f"{base}&date_from={date_from}&date_to={LAST_DAY}"
        rows, app_seconds = app_export(client, url)
        rss_growth = rss_mb() - baseline_rss
        tracemalloc.start()
        app_export(client, url)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        select, params = sync_info_select(
            organisation_id=organisation.pk,
            start=datetime(date_from.year, date_from.month, date_from.day, tzinfo=UTC),
            end=datetime(LAST_DAY.year, LAST_DAY.month, LAST_DAY.day, tzinfo=UTC)
            + timedelta(days=1),
        )
        psql_seconds = psql_export(select, params)
        results.append((rows, app_seconds, psql_seconds))
        print(
            f"  {rows:>9,} rows: app {app_seconds:6.2f} s = {rows / app_seconds:9,.0f} rows/s; "
            f"psql \\copy {psql_seconds:6.2f} s = {rows / psql_seconds:9,.0f} rows/s; "
            f"ratio {psql_seconds / app_seconds:5.1%}; "
            f"peak RSS growth {rss_growth:5.1f} MB, tracemalloc peak {traced_peak / 1e6:5.2f} MB"
        )
    rows, app_seconds, psql_seconds = results[-1]
    print(
        f"  target: app >= 50% of psql -> {psql_seconds / app_seconds:.1%} at {rows:,} rows; "
        f"memory flat across 250k / 500k / 1M"
    )


if __name__ == "__main__":
    try:
        main()
    finally:
        connection.close()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
