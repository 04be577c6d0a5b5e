"""Ops dashboard benchmark: the Django admin index with 10,000 organisations.

Loads 10,000 organisations in every subscription state, each with twelve monthly period invoices
(one per month of the charts, with their plan lines), payments, failed-payment cases,
cancellations, credit notes, usage alerts and support tickets (bulk inserts), then times the
admin index page (dashboard and its twelve months of charts included) through Django's test
client, signed in as a superuser: median and p95 of 30 requests, and the number of SQL queries,
at 1, 1,000 and 10,000 organisations; and last month's finance export (one COPY) at 10,000.

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
from billing.finance_export import export_period, finance_export_csv  # noqa: E402
from billing.models import CreditNote, DunningCase, Invoice, InvoiceLine, Payment  # noqa: E402
from portal import ops_figures  # noqa: E402
from portal.ops_figures import last_months  # noqa: E402
from subscriptions.models import Plan, Subscription  # noqa: E402
from support.models import SupportTicket  # noqa: E402
from usage.models import UsageAlert  # noqa: E402

STATUSES = ["active", "active", "active", "past_due", "grace", "suspended", "ended", "incomplete"]
REASONS = ["too_expensive", "missing_features", "switching", "not_using", "other"]


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
    subs = Subscription.objects.bulk_create(
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
                canceled_at=now - timedelta(days=i % 330) if i % 20 == 0 else None,
                cancellation_reason=REASONS[i % len(REASONS)] if i % 20 == 0 else "",
            )
            for i, org in enumerate(orgs)
        ],
        batch_size=2000,
    )
    months = last_months(now=now)
    invoices = Invoice.objects.bulk_create(
        [
            Invoice(
                organisation=org,
                subscription=sub,
                number=f"INV-{month.start:%Y%m}-{offset + i + 1:06d}",
                status="paid" if i % 4 or not month.is_current else "open",
                currency=sub.currency,
                subtotal=49_900,
                tax_amount=0,
                total=49_900,
                amount_paid=49_900 if i % 4 or not month.is_current else 0,
                tax_rule="standard",
                plan_name="Professional",
                billing_cycle="monthly",
                period_start=month.start,
                period_end=month.end,
                billing_details={"company_name": org.name, "country": "DE"},
                payment_method_kind="card",
                starts_term=index == 0,
                issued_at=month.start,
                due_at=month.start,
            )
            for i, (org, sub) in enumerate(zip(orgs, subs, strict=True))
            for index, month in enumerate(months)
        ],
        batch_size=2000,
    )
    InvoiceLine.objects.bulk_create(
        [
            InvoiceLine(
                invoice=invoice,
                position=1,
                kind="plan",
                description="Professional plan, monthly subscription",
                unit_amount=49_900,
                amount=49_900,
                period_start=invoice.period_start,
                period_end=invoice.period_end,
            )
            for invoice in invoices
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
                created_at=invoice.issued_at,
                completed_at=invoice.issued_at,
            )
            for invoice in invoices
            if invoice.status == "paid"
        ],
        batch_size=2000,
    )
    CreditNote.objects.bulk_create(
        [
            CreditNote(
                organisation_id=invoice.organisation_id,
                invoice=invoice,
                number=f"CN-{invoice.number[4:]}",
                reason="goodwill",
                outcome="balance",
                currency=invoice.currency,
                subtotal=1_000,
                tax_amount=0,
                total=1_000,
                issued_at=invoice.issued_at + timedelta(days=3),
            )
            for invoice in invoices[::50]
        ],
        batch_size=2000,
    )
    DunningCase.objects.bulk_create(
        [
            DunningCase(
                organisation=org,
                subscription=sub,
                status="resolved",
                started_at=months[i % 12].start + timedelta(days=2),
                closed_at=months[i % 12].start + timedelta(days=5),
            )
            for i, (org, sub) in enumerate(zip(orgs[::10], subs[::10], strict=True))
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
    for target in (1, 1_000, args.organisations):
        started = time.perf_counter()
        load(target - loaded, loaded)
        print(f"loaded {target - loaded:,} organisations in {time.perf_counter() - started:.1f} s")
        loaded = target
        median, p95, queries = measure(client, args.requests)
        print(
            f"{loaded:>6,} organisations: admin index median {median:.1f} ms, p95 {p95:.1f} ms, "
            f"{queries} SQL queries"
        )
    now = timezone.now()
    months = last_months(now=now)
    for family in (
        ops_figures.mrr,
        ops_figures.money,
        ops_figures.failed_payments,
        ops_figures.cancellations,
        ops_figures.new_subscriptions,
    ):
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            family(months=months, now=now)
            timings.append((time.perf_counter() - started) * 1000)
        print(f"  chart family {family.__name__}: median {statistics.median(timings):.1f} ms")
    last_month = months[-2].start
    period = export_period(kind="month", year=last_month.year, number=last_month.month, now=now)
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        size = sum(len(chunk) for chunk in finance_export_csv(period=period))
    print(
        f"finance export of {period.label}: {size / 1e6:.1f} MB in "
        f"{(time.perf_counter() - started) * 1000:.0f} ms, "
        f"{len(queries) or 1} SQL statement (one COPY)"
    )


if __name__ == "__main__":
    main()
