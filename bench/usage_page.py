"""Settings > Subscription with its Usage section, and Usage history: the pages cost the same
whatever the Sync Info volume.

Two organisations on the same plan, one with no Sync Info and one with 10,000,000 rows spread
over the current usage month (and the matching per-day usage counters). Prints the median time
of the Subscription page for a signed-in Admin of each (30 requests after warm-up, Django test
Client, DEBUG off), the queries per page, and the ratio (target: at most 1.2x); then the same
for Usage history, and EXPLAIN ANALYZE of its counter query at that volume (expected: an index
scan of the organisation's usage counters, nothing of usage_syncinfo).

Runs against a scratch database `billing_bench_usage` on the project-local Postgres (created
and dropped here):  make services-start && source scripts/env.sh &&
DEBUG=1 python bench/usage_page.py [--rows 10000000] [--requests 30]
"""

import argparse
import os
import re
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")
os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"

DATABASE = "billing_bench_usage"
base_url = os.environ.get("DATABASE_URL", "postgres://portal@127.0.0.1:55432/billing_portal")
parts = urlsplit(base_url)
os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{DATABASE}"))

import django  # noqa: E402
import psycopg  # noqa: E402

ADMIN_DSN = urlunsplit(parts._replace(path="/postgres"))
with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
    admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    admin.execute(f"CREATE DATABASE {DATABASE}")

django.setup()

from django.conf import settings  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

# Production runs with DEBUG off; with it on, Django keeps every query in memory.
setup_test_environment(debug=False)
settings.DEBUG = False

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

call_command("migrate", verbosity=0)

from accounts.models import Membership, Organisation, User  # noqa: E402
from subscriptions.models import Environment, Plan, ProcessFlow, Subscription  # noqa: E402
from usage.months import usage_month_of  # noqa: E402
from usage.partitions import ingest_retention, partitions_ensure  # noqa: E402


def make_organisation(slug: str, *, now):
    organisation = Organisation.objects.create(
        name=slug.title(), slug=slug, primary_email=f"{slug}@bench.test", time_zone="Europe/Berlin"
    )
    user = User.objects.create_user(email=f"admin@{slug}.test")  # signed in with force_login
    Membership.objects.create(organisation=organisation, user=user, role=Membership.Role.ADMIN)
    plan = Plan.objects.get(code="professional")
    anchor = now - timedelta(days=20)
    subscription = Subscription.objects.create(
        organisation=organisation,
        plan=plan,
        billing_cycle="monthly",
        status="active",
        currency="USD",
        anchor_at=anchor,
        current_period_start=anchor,
        current_period_end=anchor + timedelta(days=30),
        current_price=plan.price_for("USD").monthly_amount,
        activated_at=anchor,
    )
    environment = Environment.objects.create(organisation=organisation, name="Production")
    flow = ProcessFlow.objects.create(
        organisation=organisation, environment=environment, name="Orders to ERP"
    )
    return organisation, user, subscription, environment, flow


def fill(*, organisation, subscription, environment, flow, rows: int, now) -> float:
    """`rows` Sync Info rows spread evenly from the usage month's start to now, and the
    per-day counters the ingest would have written for them."""
    start, _ = usage_month_of(subscription, now)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at, message, retention_days) "
            "SELECT %s, %s, %s, n / 5000, 'order-' || n, "
            "CASE WHEN n %% 50 = 0 THEN 'failed' ELSE 'success' END, 'outbound', "
            "%s::timestamptz + (%s::timestamptz - %s::timestamptz) * (n::float8 / %s), 'ok', %s "
            "FROM generate_series(0, %s - 1) AS n",
            [
                organisation.pk,
                environment.pk,
                flow.pk,
                start,
                now,
                start,
                rows,
                ingest_retention(subscription).days("usage_syncinfo"),
                rows,
            ],
        )
        cursor.execute(
            "INSERT INTO usage_usagecounter (organisation_id, month_start, day, transactions) "
            "SELECT %s, %s, (synced_at AT TIME ZONE %s)::date, count(*) FROM usage_syncinfo "
            "WHERE organisation_id = %s GROUP BY 3",
            [organisation.pk, start, organisation.time_zone, organisation.pk],
        )
        cursor.execute("ANALYZE usage_syncinfo")
        cursor.execute("ANALYZE usage_usagecounter")
    return time.perf_counter() - started


def other_counters(*, busy, organisations: int, days: int, now) -> int:
    """Usage counters of `organisations` other organisations and of the busy one's earlier
    days, `days` each, so the counters table has the shape of a few years in production and
    Postgres chooses its plan over a realistic table, not a page of rows."""
    others = Organisation.objects.bulk_create(
        Organisation(name=f"Other {n}", slug=f"other-{n}", primary_email=f"o{n}@bench.test")
        for n in range(organisations)
    )
    start, _ = usage_month_of(busy.subscription, now)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_usagecounter (organisation_id, month_start, day, transactions) "
            "SELECT o, date_trunc('month', %s::timestamptz - d * interval '1 day'), "
            "(%s::timestamptz - d * interval '1 day')::date, 1000 "
            "FROM unnest(%s::bigint[]) AS o, generate_series(1, %s) AS d",
            [start, start, [o.pk for o in others] + [busy.pk], days],
        )
        inserted = cursor.rowcount
        cursor.execute("ANALYZE usage_usagecounter")
    return inserted


def time_page(
    user, organisation, *, requests: int, name: str = "subscriptions:settings"
) -> tuple[float, int, str]:
    client = Client()
    client.force_login(user)
    url = reverse(name, args=[organisation.slug])
    for _ in range(5):
        response = client.get(url)
        assert response.status_code == 200, response.status_code
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        client.get(url)
        timings.append(time.perf_counter() - started)
    with CaptureQueriesContext(connection) as queries:
        body = client.get(url).content.decode()
    assert not any("usage_syncinfo" in q["sql"] for q in queries.captured_queries)
    if name == "billing:usage_history":
        row = re.search(r"<tbody>\s*<tr[^>]*>(.*?)</tr>", body, re.S).group(1)
        figure = " ".join(re.sub(r"<[^>]+>", " ", row).split())
    else:
        paragraph = re.search(r'<p class="usage-figure"[^>]*>(.*?)</p>', body, re.S).group(1)
        figure = " ".join(re.sub(r"<[^>]+>", " ", paragraph).split())
    return statistics.median(timings), len(queries.captured_queries), figure


def history_query_plan(user, organisation) -> str:
    """EXPLAIN ANALYZE of the counter query Usage history runs, as the page ran it."""
    client = Client()
    client.force_login(user)
    with CaptureQueriesContext(connection) as queries:
        client.get(reverse("billing:usage_history", args=[organisation.slug]))
    [sql] = [q["sql"] for q in queries.captured_queries if "usage_usagecounter" in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        return "\n".join(f"    {line}" for (line,) in cursor.fetchall())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    now = timezone.now()
    partitions_ensure(now=now)
    print(f"Usage page benchmark, {connection.settings_dict['NAME']}, {os.cpu_count()} cores")
    empty_org, empty_admin, *_ = make_organisation("empty", now=now)
    big_org, big_admin, subscription, environment, flow = make_organisation("busy", now=now)
    elapsed = fill(
        organisation=big_org,
        subscription=subscription,
        environment=environment,
        flow=flow,
        rows=args.rows,
        now=now,
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_syncinfo")
        stored = cursor.fetchone()[0]
    print(f"  setup: {stored:,} Sync Info rows inserted and counted in {elapsed:5.1f} s")
    counters = other_counters(busy=big_org, organisations=2000, days=730, now=now)
    print(f"  and {counters:,} usage counters of 2,000 other organisations and earlier days")
    empty, empty_queries, empty_figure = time_page(empty_admin, empty_org, requests=args.requests)
    busy, busy_queries, busy_figure = time_page(big_admin, big_org, requests=args.requests)
    print(
        f"  0 Sync Info rows:          {empty * 1000:7.2f} ms median of {args.requests} "
        f"({empty_queries} queries)\n    {empty_figure}"
    )
    print(
        f"  {stored:,} Sync Info rows: {busy * 1000:7.2f} ms median of {args.requests} "
        f"({busy_queries} queries)\n    {busy_figure}"
    )
    print(f"  ratio {busy / empty:4.2f}x (target at most 1.2x)")
    print("Usage history")
    empty, empty_queries, empty_figure = time_page(
        empty_admin, empty_org, requests=args.requests, name="billing:usage_history"
    )
    busy, busy_queries, busy_figure = time_page(
        big_admin, big_org, requests=args.requests, name="billing:usage_history"
    )
    print(
        f"  0 Sync Info rows:          {empty * 1000:7.2f} ms median of {args.requests} "
        f"({empty_queries} queries)\n    {empty_figure}"
    )
    print(
        f"  {stored:,} Sync Info rows: {busy * 1000:7.2f} ms median of {args.requests} "
        f"({busy_queries} queries)\n    {busy_figure}"
    )
    print(f"  ratio {busy / empty:4.2f}x (target at most 1.2x)")
    print("  the counter query's plan:")
    print(history_query_plan(big_admin, big_org))


if __name__ == "__main__":
    try:
        main()
    finally:
        connection.close()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
