"""Invoice PDF rendering: our end-to-end cost against WeasyPrint's own for the same HTML.

    source scripts/env.sh && DEBUG=1 python bench/pdf_render.py [where-to-save-the.pdf]

Builds one realistic invoice (annual Enterprise plan, overage and proration lines, 23% VAT,
bank transfer) in the development database inside a transaction that is rolled back, then
prints the median of 20 runs, after 3 warm-ups, of (run alternately)
  (a) `HTML(string=html).write_pdf()` for the final HTML string, and
  (b) `invoice_pdf_bytes()`: reading the lines, the template and WeasyPrint.
Target: (b) within 1.5x of (a).

(a) is mostly WeasyPrint's layout. The documents' tables (but the small totals) have a fixed layout
(templates/billing/document_pdf_base.html): the automatic one, which measures every cell, took
over half of (a) here (on two cores, about 290 ms with it against 150 ms without).
"""

import logging
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")

import django  # noqa: E402

django.setup()
# WeasyPrint logs every rendering step at INFO; keep the figures readable.
logging.getLogger("weasyprint").setLevel(logging.WARNING)

from django.db import transaction  # noqa: E402
from weasyprint import HTML  # noqa: E402

from accounts.models import Organisation  # noqa: E402
from billing.models import Invoice, InvoiceLine  # noqa: E402
from billing.pdf import invoice_pdf_bytes, invoice_pdf_html  # noqa: E402

WARM_UPS = 3
RUNS = 20
TARGET_RATIO = 1.5
ZONE = ZoneInfo("Europe/Dublin")


class Rollback(Exception):
    pass


def build_invoice() -> Invoice:
    organisation = Organisation.objects.create(
        name="Bench Trading Ltd",
        slug=f"bench-pdf-{os.getpid()}",
        primary_email="accounts@bench.example",
        time_zone="Europe/Dublin",
        currency="EUR",
    )

    def at(year, month, day):
        return datetime(year, month, day, tzinfo=ZONE)

    lines = [
        InvoiceLine(
            position=1,
            kind=InvoiceLine.Kind.PLAN,
            description="Enterprise plan (annual)",
            quantity=1,
            unit_amount=1_990_000,
            amount=1_990_000,
            period_start=at(2026, 12, 1),
            period_end=at(2027, 12, 1),
        ),
        InvoiceLine(
            position=2,
            kind=InvoiceLine.Kind.PRORATION,
            description="Upgrade from Professional, remaining 11 days",
            quantity=1,
            unit_amount=4_583,
            amount=4_583,
            period_start=at(2026, 11, 20),
            period_end=at(2026, 12, 1),
        ),
    ]
    for month in range(1, 9):
        blocks = 3 + month
        lines.append(
            InvoiceLine(
                position=len(lines) + 1,
                kind=InvoiceLine.Kind.OVERAGE,
                description=f"Transaction overage ({blocks} × 1,000 above 1,000,000)",
                quantity=blocks,
                unit_amount=300,
                amount=blocks * 300,
                period_start=at(2026, month, 1),
                period_end=at(2026, month + 1, 1),
            )
        )
    subtotal = sum(line.amount for line in lines)
    tax = subtotal * 23 // 100
    invoice = Invoice.objects.create(
        organisation=organisation,
        number=f"BENCH-{os.getpid()}",
        status=Invoice.Status.OPEN,
        currency="EUR",
        subtotal=subtotal,
        tax_amount=tax,
        total=subtotal + tax,
        tax_rule="standard",
        tax_rate_bp=2300,
        tax_name="VAT",
        plan_name="Enterprise",
        billing_cycle="annual",
        period_start=at(2026, 12, 1),
        period_end=at(2027, 12, 1),
        billing_details={
            "company_name": "Bench Trading Ltd",
            "address_line1": "12 Grand Canal Street",
            "address_line2": "Block C, 4th floor",
            "city": "Dublin",
            "postal_code": "D02 F654",
            "region": "",
            "country": "IE",
            "country_name": "Ireland",
            "vat_number": "IE6388047V",
            "po_number": "",
            "email": "accounts@bench.example",
        },
        payment_method_kind="bank_transfer",
        issued_at=at(2026, 12, 1),
        due_at=at(2026, 12, 31),
    )
    for line in lines:
        line.invoice = invoice
    InvoiceLine.objects.bulk_create(lines)
    return Invoice.objects.select_related("organisation").get(pk=invoice.pk)


def median_ms(*works) -> list[float]:
    """Median wall time of each callable; runs alternate so machine load hits all alike."""
    for _ in range(WARM_UPS):
        for work in works:
            work()
    timings = [[] for _ in works]
    for _ in range(RUNS):
        for work, times in zip(works, timings, strict=True):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
    return [statistics.median(times) * 1000 for times in timings]


def main() -> int:
    try:
        with transaction.atomic():
            invoice = build_invoice()
            html = invoice_pdf_html(invoice=invoice)
            line_count = invoice.lines.count()
            pages = len(HTML(string=html).render().pages)
            weasyprint_ms, ours_ms, html_ms = median_ms(
                lambda: HTML(string=html).write_pdf(),
                lambda: invoice_pdf_bytes(invoice=invoice),
                lambda: invoice_pdf_html(invoice=invoice),
            )
            pdf = invoice_pdf_bytes(invoice=invoice)
            raise Rollback
    except Rollback:
        pass
    if len(sys.argv) > 1:
        # Optional: keep the rendered PDF to look at it.
        Path(sys.argv[1]).write_bytes(pdf)
    ratio = ours_ms / weasyprint_ms
    print(f"invoice: {line_count} lines, {pages} page(s), PDF {len(pdf) / 1024:.1f} KiB")
    print(f"(a) WeasyPrint HTML(string=html).write_pdf(): median {weasyprint_ms:.1f} ms")
    print(f"(b) invoice_pdf_bytes() end to end:           median {ours_ms:.1f} ms")
    print(f"    of which invoice_pdf_html() (lines query + template): median {html_ms:.1f} ms")
    verdict = "OK" if ratio <= TARGET_RATIO else "OVER TARGET"
    print(f"ratio (b)/(a): {ratio:.2f} (target <= {TARGET_RATIO}) {verdict}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
