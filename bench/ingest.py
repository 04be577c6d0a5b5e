"""Sync Info ingestion benchmark: the machine API against a raw COPY of the same rows.

Serves the app with gunicorn (DEBUG off, several workers) on a scratch database
`billing_bench_ingest` (created and dropped here), posts --records records in batches of
--batch from --clients threads over keep-alive connections (after a warm-up of two batches
per worker, not timed, so no worker answers its first request on the clock), and times it
end to end (JSON, authentication, validation, COPY, usage counters, idempotency rows). Then
COPYs as many equivalent rows from Python (psycopg) into a scratch table partitioned and
indexed like usage_syncinfo, in one stream, and prints both rates and their ratio (target:
the API at least 75% of raw COPY, at every volume from 50,000 to 2,000,000 records).

It also prints the server time per batch, median and p95 (target: at most 8 ms per 1,000
records at the median). That is gunicorn's own request time (the access log's %(D)s, in
microseconds, from the request line read to the response written, in the worker), for the
measured batches only: the access log carries each request's Idempotency-Key, and the
warm-up's keys are told apart from the measured run's. Under full load that time includes
the wait for a core, so it is printed twice: for the measured run, and for 30 batches sent
one at a time afterwards (an idle server: what one batch costs). Beside it, raw COPY's own
time per 1,000 rows: the part of a batch that is Postgres storing the rows, which no change
to the API can remove while the rows are stored before the answer. Last, the size of a
stored Sync Info row with its share of the indexes (docs/scaling.md).

Defaults: 2 sync workers (one per core) and 3 client threads, the best of the settings
measured on 2 cores (4 workers with 6 clients stored as many records a second, at twice the
server time per batch; docs/scaling.md has the figures).

    make services-start && source scripts/env.sh && python bench/ingest.py \
        [--records 2000000] [--batch 1000] [--clients 3] [--workers 2] [--profile]

--profile first prints a cProfile of one in-process 1,000-record ingest (no HTTP).
"""

import argparse
import cProfile
import http.client
import io
import json
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DB_NAME = "billing_bench_ingest"
PORT = 8098
os.environ.setdefault("DEBUG", "1")  # in-process setup only; the served app runs with DEBUG=0
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")
os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"

base_url = os.environ.get("DATABASE_URL", "postgres://portal@127.0.0.1:55432/billing_portal")
parts = urlsplit(base_url)
BENCH_URL = urlunsplit(parts._replace(path=f"/{DB_NAME}"))
os.environ["DATABASE_URL"] = BENCH_URL
ADMIN_DSN = urlunsplit(parts._replace(path="/postgres"))

import django  # noqa: E402
import psycopg  # noqa: E402

with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
    admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME}")
    admin.execute(f"CREATE DATABASE {DB_NAME}")

django.setup()

from django.conf import settings  # noqa: E402

settings.DEBUG = False  # with it on, Django keeps every query in memory

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

call_command("migrate", verbosity=0)

from sync_records import sync_records  # noqa: E402 - bench/, the script's folder

from accounts.audit import SYSTEM  # noqa: E402
from accounts.models import Organisation  # noqa: E402
from subscriptions.models import Environment, Plan, ProcessFlow, Subscription  # noqa: E402
from usage.partitions import ingest_retention, partitions_ensure  # noqa: E402
from usage.services import api_key_create  # noqa: E402

RAW_TABLE = "bench_raw_syncinfo"
IDLE_BATCHES = 30  # sent one at a time after the measured run


def setup_tenant(now: datetime) -> tuple[str, list[ProcessFlow]]:
    partitions_ensure(now=now)
    plan = Plan.objects.get(code="enterprise")
    # A limit out of reach: the 80%/100% alert emails are not what is measured here.
    Plan.objects.filter(pk=plan.pk).update(monthly_transactions=10**12)
    organisation = Organisation.objects.create(
        name="Bench Ingest", slug="bench-ingest", primary_email="bench@ingest.test"
    )
    Subscription.objects.create(
        organisation=organisation,
        plan=plan,
        billing_cycle="annual",
        status="active",
        currency="USD",
        anchor_at=now - timedelta(days=40),
        current_period_start=now - timedelta(days=40),
        current_period_end=now + timedelta(days=325),
        current_price=1991000,
    )
    environment = Environment.objects.create(organisation=organisation, name="Production")
    flows = [
        ProcessFlow.objects.create(
            organisation=organisation, environment=environment, name=f"Flow {n}"
        )
        for n in range(4)
    ]
    _, plain = api_key_create(environment=environment, actor=SYSTEM, name="bench", now=now)
    return plain, flows


def make_records(rng: random.Random, flows, *, count: int, now: datetime) -> list[dict]:
    """Records as the runtime sends them: ~3% failed with a message, synced over 7 days."""
    flow_ids = [str(flow.public_id) for flow in flows]
    return sync_records(rng, flow_ids, count=count, now=now, span_seconds=7 * 86_400)


def profile_one_batch(plain: str, body: bytes, now: datetime) -> None:
    from usage.services import api_key_authenticate, sync_info_ingest

    key = api_key_authenticate(plain=plain, now=now)
    sync_info_ingest(key=key, idempotency_key="warm-profile", body=body, now=now)
    timings = []
    for n in range(20):
        started = time.perf_counter()
        sync_info_ingest(key=key, idempotency_key=f"warm-{n}", body=body, now=now)
        timings.append(time.perf_counter() - started)
    timings.sort()
    print(f"  in-process ingest of one 1,000-record batch: {timings[10] * 1000:.1f} ms (median)")
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    result = sync_info_ingest(key=key, idempotency_key="profile", body=body, now=now)
    profiler.disable()
    elapsed = time.perf_counter() - started
    assert result.status_code == 201, result.body
    print(f"  in-process ingest of one 1,000-record batch: {elapsed * 1000:.1f} ms (profiled)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumtime").print_stats(30)
    print("\n".join("    " + line for line in out.getvalue().splitlines()[4:44]))


def start_server(workers: int, access_log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "bench-ingest-" + uuid.uuid4().hex,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "DATABASE_URL": BENCH_URL,
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        "LOG_LEVEL": "WARNING",
        # The per-key limit (600 a minute by default) would refuse a long run; the check
        # itself, a Redis round trip per request, stays in what is measured.
        "API_RATE_LIMIT": "1000000/m",
    }
    server = subprocess.Popen(  # noqa: S603 - our own gunicorn, fixed arguments
        [
            str(ROOT / ".venv" / "bin" / "gunicorn"),
            "billing_portal.wsgi",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{PORT}",
            "--log-level",
            "warning",
            "--keep-alive",
            "30",
            # Per request: its Idempotency-Key, status and time in the worker (microseconds).
            "--access-logfile",
            str(access_log),
            "--access-logformat",
            "%({idempotency-key}i)s %(s)s %(D)s",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            probe = http.client.HTTPConnection("127.0.0.1", PORT, timeout=2)
            probe.request("GET", "/api/v1/openapi.json")
            if probe.getresponse().status == 200:
                return server
        except OSError:
            pass
        if server.poll() is not None:
            raise SystemExit("gunicorn exited at start-up")
        time.sleep(0.3)
    server.terminate()
    raise SystemExit("gunicorn did not answer within 60 s")


def post_all(plain: str, bodies: list[bytes], *, batches: int, clients: int) -> tuple[float, str]:
    """POST `batches` batches from `clients` threads; returns the wall time in seconds and the
    run's Idempotency-Key prefix."""
    run = f"bench-{uuid.uuid4().hex[:10]}-"
    counter = iter(range(batches))
    lock = threading.Lock()
    failures = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
        headers = {"Authorization": f"Bearer {plain}", "Content-Type": "application/json"}
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            conn.request(
                "POST",
                "/api/v1/sync-info",
                body=bodies[index % len(bodies)],
                headers={**headers, "Idempotency-Key": f"{run}{index}"},
            )
            response = conn.getresponse()
            payload = response.read()
            if response.status != 201:
                failures.append((response.status, payload[:300]))
                break
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"API failures: {failures[:3]}")
    return elapsed, run


def server_times(access_log: Path, run: str) -> list[float]:
    """The server time of each of the run's requests, in milliseconds, sorted."""
    times = []
    for line in access_log.read_text().splitlines():
        key, status, micros = line.rsplit(" ", 2)
        if key.startswith(run) and status == "201":
            times.append(int(micros) / 1000)
    return sorted(times)


def raw_copy(rows_per_body: list[list[tuple]], *, total: int) -> float:
    """COPY `total` rows equivalent to the posted ones into a table partitioned and indexed
    like usage_syncinfo, in one stream from Python; returns the wall time in seconds."""
    with psycopg.connect(BENCH_URL, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {RAW_TABLE}")
        (key,) = conn.execute("SELECT pg_get_partkeydef('usage_syncinfo'::regclass)").fetchone()
        conn.execute(
            f"CREATE TABLE {RAW_TABLE} (LIKE usage_syncinfo INCLUDING DEFAULTS "
            f"INCLUDING IDENTITY INCLUDING CONSTRAINTS) PARTITION BY {key}"
        )
        # The same tree of partitions (tiers, their blocks and defaults), parents first.
        for name, parent, bound, subkey in conn.execute(
            "SELECT c.relid::regclass::text, c.parentrelid::regclass::text, "
            "pg_get_expr(r.relpartbound, r.oid), "
            "CASE WHEN r.relkind = 'p' THEN pg_get_partkeydef(r.oid) END "
            "FROM pg_partition_tree('usage_syncinfo') c JOIN pg_class r ON r.oid = c.relid "
            "WHERE c.level > 0 ORDER BY c.level, 1"
        ).fetchall():
            conn.execute(
                f"CREATE TABLE {name.replace('usage_syncinfo', RAW_TABLE)} "
                f"PARTITION OF {parent.replace('usage_syncinfo', RAW_TABLE)} {bound}"
                + (f" PARTITION BY {subkey}" if subkey else "")
            )
        # And the same indexes, on every partition (the primary key as the unique index it
        # is; pg_indexes shows a partitioned index as ON ONLY the parent).
        for (definition,) in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'usage_syncinfo'"
        ).fetchall():
            conn.execute(
                definition.replace(" ON ONLY ", " ON ").replace("usage_syncinfo", RAW_TABLE)
            )
        leaves = conn.execute(
            "SELECT count(*) FROM pg_partition_tree(%s) WHERE isleaf", [RAW_TABLE]
        ).fetchone()[0]
        indexes = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename LIKE %s", [f"{RAW_TABLE}%"]
        ).fetchone()[0]
        assert indexes >= 4 * leaves, (indexes, leaves)
        started = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor() as cursor,
            cursor.copy(
                f"COPY {RAW_TABLE} (id, organisation_id, environment_id, flow_id, batch_id, "
                "record_key, status, direction, synced_at, message, has_snapshot, "
                "retention_days) FROM STDIN"
            ) as copy,
        ):
            pk = 0
            while pk < total:
                for row in rows_per_body[(pk // 1000) % len(rows_per_body)]:
                    pk += 1
                    copy.write_row((pk, *row))
                    if pk == total:
                        break
        elapsed = time.perf_counter() - started
        copied = conn.execute(f"SELECT count(*) FROM {RAW_TABLE}").fetchone()[0]  # noqa: S608
        assert copied == total, (copied, total)
        return elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    now = datetime.now(UTC)
    plain, flows = setup_tenant(now)
    rng = random.Random(6)
    distinct = 40  # batch bodies, reused with fresh Idempotency-Keys to keep the clients light
    records = [make_records(rng, flows, count=args.batch, now=now) for _ in range(distinct)]
    bodies = [json.dumps({"records": batch}).encode() for batch in records]
    flow_pk = {str(flow.public_id): flow.pk for flow in flows}
    environment_id, organisation_id = flows[0].environment_id, flows[0].organisation_id
    # The retention tier the ingest writes for the organisation.
    tier = ingest_retention(Subscription.objects.get(organisation_id=organisation_id)).days(
        "usage_syncinfo"
    )
    rows = [
        [
            (
                organisation_id,
                environment_id,
                flow_pk[r["flow_id"]],
                n,
                r["record_key"],
                r["status"],
                r["direction"],
                datetime.fromisoformat(r["synced_at"]),
                r["message"],
                False,
                tier,
            )
            for r in batch
        ]
        for n, batch in enumerate(records)
    ]
    print(
        f"Ingest benchmark, {DB_NAME}, {os.cpu_count()} cores: {args.records:,} records, "
        f"batches of {args.batch:,}, {args.clients} client threads, gunicorn -w {args.workers}"
    )
    if args.profile:
        profile_one_batch(plain, bodies[0], now)
    connection.close()

    access_log = Path(tempfile.mkdtemp(prefix="bench-ingest-")) / "access.log"
    server = start_server(args.workers, access_log)
    try:
        post_all(plain, bodies, batches=args.workers * 2, clients=args.clients)  # warm-up
        with psycopg.connect(BENCH_URL, autocommit=True) as conn:
            conn.execute("TRUNCATE usage_syncinfo, usage_snapshot")
            conn.execute("DELETE FROM usage_usagecounter")
            conn.execute("DELETE FROM usage_ingestbatch WHERE idempotency_key LIKE 'bench-%%'")
            conn.execute("CHECKPOINT")
        batches = -(-args.records // args.batch)
        api_elapsed, run = post_all(plain, bodies, batches=batches, clients=args.clients)
        _, idle_run = post_all(plain, bodies, batches=IDLE_BATCHES, clients=1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    times = server_times(access_log, run)
    idle_times = server_times(access_log, idle_run)
    shutil.rmtree(access_log.parent)
    assert len(times) == batches, (len(times), batches)
    posted = batches * args.batch
    with psycopg.connect(BENCH_URL, autocommit=True) as conn:
        stored = conn.execute("SELECT count(*) FROM usage_syncinfo").fetchone()[0]
        counted = conn.execute("SELECT sum(transactions) FROM usage_usagecounter").fetchone()[0]
        (size,) = conn.execute(
            "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('usage_syncinfo') "
            "WHERE isleaf"
        ).fetchone()
        conn.execute("CHECKPOINT")
    expected = posted + IDLE_BATCHES * args.batch
    assert stored == counted == expected, (stored, counted, expected)
    api_rate = posted / api_elapsed
    print(
        f"  API:      {posted:>10,} records in {api_elapsed:7.2f} s = {api_rate:>9,.0f} records/s "
        f"(stored and counted: {stored:,})"
    )
    copy_elapsed = raw_copy(rows, total=posted)
    copy_rate = posted / copy_elapsed
    print(
        f"  raw COPY: {posted:>10,} rows    in {copy_elapsed:7.2f} s = {copy_rate:>9,.0f} rows/s "
        "(one stream, same partitions and indexes)"
    )
    print(f"  API / raw COPY = {100 * api_rate / copy_rate:.0f}% (target: at least 75%)")
    median, p95 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.95))]
    print(
        f"  server time per {args.batch:,}-record batch (gunicorn's request time): "
        f"median {median:.1f} ms, p95 {p95:.1f} ms (target: median at most 8 ms per 1,000)"
    )
    print(
        f"  the same, {IDLE_BATCHES} batches one at a time (idle server): median "
        f"{idle_times[len(idle_times) // 2]:.1f} ms; raw COPY's own time per "
        f"{args.batch:,} rows: {args.batch / copy_rate * 1000:.1f} ms"
    )
    print(f"  stored Sync Info: {size / stored:.0f} bytes a row with its indexes")


if __name__ == "__main__":
    try:
        main()
    finally:
        connection.close()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
