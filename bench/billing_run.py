"""Billing run benchmark: 10,000 subscriptions due the same day, run through `tick`.

Prints invoices issued per second (charges and PDFs excluded; gapless numbering included),
charges per second against localstripe, PDFs per second, WeasyPrint's own time for one
invoice's HTML, and the run's peak Python memory at 2,500 / 5,000 / 10,000 subscriptions.

Runs against a scratch database `billing_bench` on the project-local Postgres (created and
dropped here) and the local services:  make services-start && source scripts/env.sh &&
DEBUG=1 python bench/billing_run.py [--subscriptions 10000] [--charges 500] [--pdfs 100]
"""

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")
os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"

base_url = os.environ.get("DATABASE_URL", "postgres://portal@127.0.0.1:55432/billing_portal")
parts = urlsplit(base_url)
os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path="/billing_bench"))

import django  # noqa: E402
import psycopg  # noqa: E402

ADMIN_DSN = urlunsplit(parts._replace(path="/postgres"))
with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
    admin.execute("DROP DATABASE IF EXISTS billing_bench")
    admin.execute("CREATE DATABASE billing_bench")

django.setup()

from django.conf import settings  # noqa: E402

# Production runs with DEBUG off; with it on, Django keeps every query in memory.
settings.DEBUG = False

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

call_command("migrate", verbosity=0)

from accounts.models import Organisation  # noqa: E402
from billing import documents, invoicing, payments  # noqa: E402
from billing.models import BillingProfile, Invoice, PaymentMethod  # noqa: E402
from billing.pdf import invoice_pdf_bytes, invoice_pdf_html  # noqa: E402
from subscriptions.models import Plan, Subscription  # noqa: E402

DUE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def make_subscriptions(count: int, *, offset: int) -> None:
    plan = Plan.objects.get(code="professional")
    orgs = Organisation.objects.bulk_create(
        [
            Organisation(
                name=f"Bench {offset + i}",
                slug=f"bench-{offset + i}",
                primary_email=f"b{offset + i}@bench.test",
            )
            for i in range(count)
        ],
        batch_size=2000,
    )
    BillingProfile.objects.bulk_create(
        [
            BillingProfile(
                organisation=o, company_name=o.name, country="DE", vat_number="DE136695976"
            )
            for o in orgs
        ],
        batch_size=2000,
    )
    Subscription.objects.bulk_create(
        [
            Subscription(
                organisation=o,
                plan=plan,
                billing_cycle="monthly",
                status="active",
                currency="USD",
                anchor_at=DUE - timedelta(days=30),
                current_period_start=DUE - timedelta(days=30),
                current_period_end=DUE,
                current_price=79900,
            )
            for o in orgs
        ],
        batch_size=2000,
    )


def silence_on_commit_enqueue():
    # PDF rendering is measured on its own below; keep the issue phase free of broker traffic.
    invoicing.queue_invoice_documents = lambda invoices: None


def reset_invoices() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE billing_invoiceline, billing_invoice, billing_invoicesequence CASCADE"
        )
        cursor.execute(
            "UPDATE subscriptions_subscription SET period_index = 0, current_period_end = %s",
            [DUE],
        )


def issue_phase(count: int, offset: int) -> tuple[float, float, int]:
    """Time one run, then run the same work again under tracemalloc for its peak memory
    (tracemalloc slows Python down, so it is not on while timing)."""
    make_subscriptions(count, offset=offset)
    started = time.perf_counter()
    issued = invoicing.billing_run_issue(now=DUE)
    elapsed = time.perf_counter() - started
    assert issued == count, (issued, count)
    numbers = Invoice.objects.order_by("number").values_list("number", flat=True)
    assert numbers.first() == "INV-2026-000001"
    assert numbers.last() == f"INV-2026-{issued:06d}"
    reset_invoices()
    tracemalloc.start()
    invoicing.billing_run_issue(now=DUE)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak / 1e6, issued


def charge_phase(count: int) -> tuple[float, int]:
    from billing import gateway
    from devkit.stripe_standin import confirmed_setup_intent, standin_request

    standin_request("/_config/data", method="DELETE")
    invoices = list(Invoice.objects.select_related("organisation").order_by("pk")[:count])
    for invoice in invoices:
        customer_id = gateway.customer_create(
            name=invoice.organisation.name,
            email=invoice.organisation.primary_email,
            organisation_id=invoice.organisation_id,
            idempotency_key=f"bench-customer-{invoice.organisation_id}",
        )
        BillingProfile.objects.filter(organisation_id=invoice.organisation_id).update(
            stripe_customer_id=customer_id
        )
        card = gateway.setup_intent_card(
            setup_intent_id=confirmed_setup_intent(customer_id=customer_id),
            customer_id=customer_id,
        )
        PaymentMethod.objects.create(
            organisation_id=invoice.organisation_id,
            stripe_payment_method_id=card.payment_method_id,
            brand=card.brand,
            last4=card.last4,
            exp_month=card.exp_month,
            exp_year=card.exp_year,
            expires_at=datetime(2031, 1, 1, tzinfo=UTC),
        )
    started = time.perf_counter()
    charged = payments.invoices_charge_due(now=DUE, limit=count)
    return time.perf_counter() - started, charged


def pdf_phase(count: int) -> tuple[float, float, float]:
    invoices = list(Invoice.objects.select_related("organisation").order_by("-pk")[:count])
    html = invoice_pdf_html(invoice=invoices[0])
    from weasyprint import HTML

    for _ in range(3):
        HTML(string=html).write_pdf()
    own = []
    for _ in range(15):
        t = time.perf_counter()
        HTML(string=html).write_pdf()
        own.append(time.perf_counter() - t)
    ours = []
    for _ in range(15):
        t = time.perf_counter()
        invoice_pdf_bytes(invoice=invoices[0])
        ours.append(time.perf_counter() - t)
    started = time.perf_counter()
    with transaction.atomic():
        for invoice in invoices:
            documents.invoice_document_original(invoice=invoice, now=DUE)
        transaction.set_rollback(True)  # keep the emails out; timing includes the inserts
    elapsed = time.perf_counter() - started
    return elapsed, statistics.median(own), statistics.median(ours)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--charges", type=int, default=300)
    parser.add_argument("--pdfs", type=int, default=60)
    args = parser.parse_args()
    silence_on_commit_enqueue()

    print(f"Billing run benchmark, {connection.settings_dict['NAME']}, {os.cpu_count()} cores")
    offset = 0
    for size in sorted(
        {max(args.subscriptions // 4, 1), args.subscriptions // 2, args.subscriptions}
    ):
        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE billing_invoiceline, billing_invoice, billing_invoicesequence CASCADE"
            )
        Subscription.objects.all().delete()
        elapsed, peak_mb, issued = issue_phase(size, offset)
        offset += size
        print(
            f"  issue {issued:>6} invoices: {elapsed:6.2f} s = {issued / elapsed:7.0f} invoices/s "
            f"(no charges, no PDFs, gapless numbers checked); peak Python memory {peak_mb:6.1f} MB"
        )
    elapsed, charged = charge_phase(args.charges)
    print(
        f"  charge {charged:>5} invoices against localstripe: {elapsed:6.2f} s "
        f"= {charged / elapsed:6.1f} charges/s"
    )
    elapsed, own, ours = pdf_phase(args.pdfs)
    print(
        f"  render {args.pdfs:>5} PDFs and store them: {elapsed:6.2f} s "
        f"= {args.pdfs / elapsed:6.1f} PDFs/s"
    )
    print(
        f"  one invoice PDF: WeasyPrint alone {own * 1000:6.1f} ms (median), "
        f"ours {ours * 1000:6.1f} ms, ratio {ours / own:4.2f}"
    )


if __name__ == "__main__":
    try:
        main()
    finally:
        connection.close()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS billing_bench")
