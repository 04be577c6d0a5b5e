"""`{% load invoice_history %}`: the rows of Invoice History, their display strings made once."""

from django import template
from django.urls import reverse
from django.utils import timezone

from core.money import format_money

register = template.Library()

# Stands for the invoice number in the one reversed PDF URL of the page.
PLACEHOLDER = "INVOICE-NUMBER"


@register.simple_tag
def invoice_history_rows(invoices, organisation) -> list:
    """The page's invoices, each with `pdf_url`, `issued_text`, `period_text`, `total_text`,
    `due_text` and `amount_due_text` (what is still owed, e.g. after a lost dispute): the same
    text as `{% url %}`, `date:"j M Y"` (`"j M"` for the due date) and `money` gave in the
    template, in the active time zone (the organisation's), for a
    tenth of their cost on a page of 20 rows.

    One reverse() for the page: invoice numbers (`INV-2026-000123`, billing.drafts) are
    letters, digits and dashes, which a URL carries as they are.
    """
    prefix, _, suffix = reverse(
        "billing:invoice_pdf", args=[organisation.slug, PLACEHOLDER]
    ).rpartition(PLACEHOLDER)
    zone = timezone.get_current_timezone()
    rows = list(invoices)
    for invoice in rows:
        start, end = invoice.period_start.astimezone(zone), invoice.period_end.astimezone(zone)
        invoice.pdf_url = f"{prefix}{invoice.number}{suffix}"
        invoice.issued_text = f"{invoice.issued_at.astimezone(zone):%-d %b %Y}"
        invoice.period_text = f"{start:%-d %b %Y} – {end:%-d %b %Y}"
        invoice.due_text = f"{invoice.due_at.astimezone(zone):%-d %b}"
        invoice.total_text = format_money(invoice.total, invoice.currency)
        invoice.amount_due_text = format_money(invoice.amount_due, invoice.currency)
    return rows
