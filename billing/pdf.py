"""Invoice PDFs (docs/architecture.md#billing).

The original PDF is rendered once at issue; ops may later issue a revised copy that shows the
organisation's current billing details. Both functions are pure: they read the invoice and
return HTML or PDF bytes, and the caller stores the InvoiceDocument.
"""

import threading
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone, translation

from billing.models import BalanceEntry, CreditNote, Invoice
from core.money import format_money
from subscriptions.models import PaymentMethodKind

TEMPLATE = "billing/invoice_pdf.html"
CREDIT_NOTE_TEMPLATE = "billing/credit_note_pdf.html"

# A Fontconfig set-up costs a noticeable part of each render, so each thread keeps one;
# Pango font maps are not safe to share between threads.
_thread_state = threading.local()


def invoice_pdf_html(
    *, invoice: Invoice, revised_at: datetime | None = None, billing_details: dict | None = None
) -> str:
    """The invoice as HTML for WeasyPrint, dates in the organisation's time zone.

    With `revised_at` it is a revised copy, marked as such, showing `billing_details` (the
    organisation's current details, BillingProfile.snapshot() format) instead of the snapshot
    taken at issue; amounts and dates stay those of the original.
    """
    if billing_details is not None and revised_at is None:
        # The original always shows the snapshot taken at issue.
        raise ValueError("billing_details can replace the snapshot only on a revised copy.")
    zone = invoice.organisation.tzinfo
    context = _context(
        invoice=invoice,
        zone=zone,
        revised_at=revised_at,
        details=billing_details if billing_details is not None else invoice.billing_details,
    )
    # The document is English whatever language the request or worker has active.
    with timezone.override(zone), translation.override(settings.LANGUAGE_CODE):
        return render_to_string(TEMPLATE, context)


def invoice_pdf_bytes(
    *, invoice: Invoice, revised_at: datetime | None = None, billing_details: dict | None = None
) -> bytes:
    """The invoice rendered as an A4 PDF (see invoice_pdf_html)."""
    html = invoice_pdf_html(invoice=invoice, revised_at=revised_at, billing_details=billing_details)
    return html_to_pdf(html)


def credit_note_pdf_html(*, credit_note: CreditNote) -> str:
    """A credit note as HTML for WeasyPrint: the seller's and the customer's details as
    snapshotted on the invoice it corrects, the lines and tax it credits, dates in the
    organisation's time zone."""
    invoice = credit_note.invoice
    zone = invoice.organisation.tzinfo

    def money(amount: int) -> str:
        return format_money(amount, credit_note.currency)

    lines = [
        {
            "description": line.description,
            "amount": money(line.amount),
            "tax": money(line.tax_amount),
            "total": money(line.amount + line.tax_amount),
        }
        for line in credit_note.lines.all()
    ]
    tax_name = "Tax" if invoice.tax_rule == "none" else (invoice.tax_name or "Tax")
    context = {
        "product_name": settings.PRODUCT_NAME,
        "seller": settings.SELLER,
        "credit_note": credit_note,
        "invoice": invoice,
        "details": invoice.billing_details,
        "tax_id_label": "GST number" if invoice.tax_name == "GST" else "VAT number",
        "lines": lines,
        "subtotal": money(credit_note.subtotal),
        "tax_label": f"{tax_name} {tax_rate_display(invoice.tax_rate_bp)}",
        "tax_amount": money(credit_note.tax_amount),
        "total": money(credit_note.total),
        "invoice_total": format_money(invoice.total, invoice.currency),
        "reverse_charge": invoice.tax_rule == "reverse_charge",
    }
    with timezone.override(zone), translation.override(settings.LANGUAGE_CODE):
        return render_to_string(CREDIT_NOTE_TEMPLATE, context)


def credit_note_pdf_bytes(*, credit_note: CreditNote) -> bytes:
    return html_to_pdf(credit_note_pdf_html(credit_note=credit_note))


def html_to_pdf(html: str) -> bytes:
    # Imported here: WeasyPrint takes about a second and 90 MB to load, which only the
    # processes that render documents should pay.
    from weasyprint import HTML
    from weasyprint.urls import URLFetcher

    # The template references no resource; refuse any fetch so a document never reaches
    # the network or the file system.
    no_fetch = URLFetcher(allowed_protocols=frozenset())
    return HTML(string=html, base_url=None, url_fetcher=no_fetch).write_pdf(
        font_config=_font_config()
    )


def _font_config():
    font_config = getattr(_thread_state, "font_config", None)
    if font_config is None:
        from weasyprint.text.fonts import FontConfiguration

        font_config = _thread_state.font_config = FontConfiguration()
    return font_config


def tax_rate_display(rate_bp: int) -> str:
    """2300 -> "23%", 2550 -> "25.5%", 0 -> "0%"."""
    return f"{(Decimal(rate_bp) / 100).normalize():f}%"


def _context(*, invoice: Invoice, zone, revised_at: datetime | None, details: dict) -> dict:
    def money(amount: int) -> str:
        return format_money(amount, invoice.currency)

    def day(moment: datetime):
        return timezone.localtime(moment, zone).date()

    lines = [
        {
            "description": line.description,
            "period_start": line.period_start,
            "period_last": _last_moment(line.period_end),
            "quantity": f"{line.quantity:,}",
            "unit_amount": money(line.unit_amount),
            "amount": money(line.amount),
        }
        for line in invoice.lines.all()
    ]
    tax_name = "Tax" if invoice.tax_rule == "none" else (invoice.tax_name or "Tax")
    kind = invoice.payment_method_kind
    # The customer balance applied at issue, one row per credit it came from, below the total.
    credits = [
        {"description": entry.description, "amount": money(entry.amount)}
        for entry in (
            invoice.balance_entries.filter(kind=BalanceEntry.Kind.APPLIED).order_by("pk")
            if invoice.credit_applied
            else ()
        )
    ]
    return {
        "product_name": settings.PRODUCT_NAME,
        "seller": settings.SELLER,
        "bank_details": settings.SELLER_BANK_DETAILS,
        "invoice": invoice,
        "revised_at": revised_at,
        "details": details,
        "tax_id_label": "GST number" if invoice.tax_name == "GST" else "VAT number",
        "plan_line": f"{invoice.plan_name} plan, {invoice.get_billing_cycle_display().lower()}",
        "period_last": _last_moment(invoice.period_end),
        "lines": lines,
        "subtotal": money(invoice.subtotal),
        "tax_label": f"{tax_name} {tax_rate_display(invoice.tax_rate_bp)}",
        "tax_amount": money(invoice.tax_amount),
        "total": money(invoice.total),
        "credits": credits,
        "paid_by_balance": invoice.status == Invoice.Status.PAID
        and not invoice.amount_paid
        and invoice.credit_applied > 0,
        "amount_paid": money(invoice.amount_paid),
        "amount_due": money(invoice.amount_due),
        "payment_terms_days": (day(invoice.due_at) - day(invoice.issued_at)).days,
        "pays_by_card": kind == PaymentMethodKind.CARD,
        "pays_by_bank_transfer": kind == PaymentMethodKind.BANK_TRANSFER,
        "pays_by_purchase_order": kind == PaymentMethodKind.PURCHASE_ORDER,
    }


def _last_moment(period_end: datetime | None) -> datetime | None:
    """Periods end exclusively; the document shows the last day they include."""
    return None if period_end is None else period_end - timedelta(seconds=1)
