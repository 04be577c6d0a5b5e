"""Ops dashboard benchmark: the Django admin index with 10,000 organisations.

Loads 10,000 organisations in every subscription state, with an issued invoice each, payments,
usage alerts and support tickets (COPY-speed bulk inserts), then times the admin index page
(dashboard included) through Django's test client, signed in as a superuser: median and p95 of
30 requests, and the number of SQL queries, at 1,000 and at 10,000 organisations.

    make services-start && source scripts/env.sh && DEBUG=1 .venv/bin/python bench/ops_dashboard.py
"""

import argparse
import statistics
import time
from datetime import timedelta

from scratch import scratch_database

scratch_database("billing_bench_dashboard")

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from accounts.models import Organisation, User  # noqa: E402
from billing.models import Invoice, Payment  # noqa: E402
from subscriptions.models import Plan, Subscription  # noqa: E402
from support.models import SupportTicket  # noqa: E402
from usage.models import UsageAlert  # noqa: E402

STATUSES = ["active", "active", "active", "past_due", "grace", "suspended", "ended", "incomplete"]


def load(count: int, offset: int) -> None:
    now = timezone.now()
    plan = Plan.objects.get(code="professional")
    orgs = Organisation.objects.bulk_create(
        [
            Organisation(name=f"Org {i}", slug=f"org-{i}", primary_email=f"billing@org{i}.test")
            for i in range(offset, offset + count)
        ],
        batch_size=2000,
    )
    start = now - timedelta(days=10)
    Subscription.objects.bulk_create(
        [
            Subscription(
                organisation=org,
                plan=plan,
                billing_cycle="monthly",
                status=STATUSES[i % len(STATUSES)],
                currency="USD" if i % 3 else "EUR",
                anchor_at=start,
                current_period_start=start,
                current_period_end=start + timedelta(days=30),
                current_price=49_900,
                activated_at=start,
            )
            for i, org in enumerate(orgs)
        ],
        batch_size=2000,
    )
    invoices = Invoice.objects.bulk_create(
        [
            Invoice(
                organisation=org,
                number=f"INV-2026-{offset + i + 1:06d}",
                status="paid" if i % 4 else "open",
                currency="USD" if i % 3 else "EUR",
                subtotal=49_900,
                tax_amount=0,
                total=49_900,
                amount_paid=49_900 if i % 4 else 0,
                tax_rule="standard",
                plan_name="Professional",
                billing_cycle="monthly",
                period_start=start,
                period_end=start + timedelta(days=30),
                billing_details={},
                payment_method_kind="card",
                issued_at=start,
                due_at=start,
            )
            for i, org in enumerate(orgs)
        ],
        batch_size=2000,
    )
    Payment.objects.bulk_create(
        [
            Payment(
                organisation_id=invoice.organisation_id,
                invoice=invoice,
                method_kind="card",
                attempt=1,
                amount=invoice.total,
                currency=invoice.currency,
                status="succeeded",
                idempotency_key=f"bench-{invoice.number}",
                created_at=start,
            )
            for invoice in invoices
            if invoice.status == "paid"
        ],
        batch_size=2000,
    )
    UsageAlert.objects.bulk_create(
        [
            UsageAlert(
                organisation=org,
                month_start=start,
                month_end=start + timedelta(days=30),
                threshold=80,
                transactions=80_000,
            )
            for org in orgs[::7]
        ],
        batch_size=2000,
    )
    SupportTicket.objects.bulk_create(
        [
            SupportTicket(
                organisation=org,
                category="payment_failing" if i % 2 else "billing",
                urgent=bool(i % 2),
                subject="Help",
                contact_email="a@b.test",
                organisation_name=org.name,
            )
            for i, org in enumerate(orgs[::20])
        ],
        batch_size=2000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def measure(client: Client, requests: int) -> tuple[float, float, int]:
    client.get("/admin/")  # warm
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/")
    assert response.status_code == 200
    # Counted now: the next request's request_started signal empties the query log.
    query_count = len(queries)
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        client.get("/admin/")
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.95) - 1], query_count


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--organisations", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    ops = User.objects.create_superuser(email="ops@bench.test", password="x")  # noqa: S106
    client = Client()
    client.force_login(ops)
    loaded = 0
    for target in (1_000, args.organisations):
        started = time.perf_counter()
        load(target - loaded, loaded)
        print(f"loaded {target - loaded:,} organisations in {time.perf_counter() - started:.1f} s")
        loaded = target
        median, p95, queries = measure(client, args.requests)
        print(
            f"{loaded:>6,} organisations: admin index median {median:.1f} ms, p95 {p95:.1f} ms, "
            f"{queries} SQL queries"
        )


if __name__ == "__main__":
    main()
