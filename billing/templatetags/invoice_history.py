"""`{% load invoice_history %}`: the rows of Invoice History, their display strings made once."""

from django import template
from django.urls import reverse
from django.utils import timezone

from billing.models import CreditNote
from core.money import format_money

register = template.Library()

# Stands for the invoice (credit note) number in the one reversed PDF URL of the page.
PLACEHOLDER = "INVOICE-NUMBER"

Outcome = CreditNote.Outcome

# What happened to a credit note's money, in the customer's words, and its badge.
CUSTOMER_OUTCOMES = {
    Outcome.REFUND: ("Refunded to card", "ok"),
    Outcome.REFUNDED_IN_STRIPE: ("Refunded to card", "ok"),
    Outcome.BALANCE: ("Added to balance", "info"),
    Outcome.REFUNDED_OUTSIDE: ("Refunded by bank transfer", "ok"),
    Outcome.REDUCE_DUE: ("Deducted from amount due", "info"),
}
REFUND_PENDING = ("Refund pending", "warn")


def customer_outcome(credit_note: CreditNote) -> tuple[str, str]:
    """(words, badge) for what happened to the credit note's money."""
    if credit_note.status == CreditNote.Status.REFUND_PENDING:
        return REFUND_PENDING
    return CUSTOMER_OUTCOMES.get(credit_note.outcome, ("Credited", ""))


def _url_maker(name: str, organisation):
    prefix, _, suffix = reverse(name, args=[organisation.slug, PLACEHOLDER]).rpartition(PLACEHOLDER)
    return lambda number: f"{prefix}{number}{suffix}"


@register.simple_tag
def invoice_history_rows(invoices, organisation) -> list:
    """The page's invoices, each with `pdf_url`, `issued_text`, `period_text`, `total_text`,
    `due_text` and `amount_due_text` (what is still owed, e.g. after a lost dispute): the same
    text as `{% url %}`, `date:"j M Y"` (`"j M"` for the due date) and `money` gave in the
    template, in the active time zone (the organisation's), for a tenth of their cost on a page
    of 20 rows. `credited_text` and `credit_applied_text` when credit notes credited it or the
    balance paid part of it; its credit notes (`credit_notes_listed`, from
    billing.selectors.invoice_list) each with `pdf_url`, `issued_text`, `total_text`,
    `outcome_text` and `outcome_badge`.

    One reverse() per kind of PDF for the page: invoice and credit-note numbers
    (`INV-2026-000123`, `CN-2026-000001`) are letters, digits and dashes, which a URL
    carries as they are.
    """
    invoice_url = _url_maker("billing:invoice_pdf", organisation)
    credit_note_url = _url_maker("billing:credit_note_pdf", organisation)
    zone = timezone.get_current_timezone()
    rows = list(invoices)
    for invoice in rows:
        start, end = invoice.period_start.astimezone(zone), invoice.period_end.astimezone(zone)
        invoice.pdf_url = invoice_url(invoice.number)
        invoice.issued_text = f"{invoice.issued_at.astimezone(zone):%-d %b %Y}"
        invoice.period_text = f"{start:%-d %b %Y} – {end:%-d %b %Y}"
        invoice.due_text = f"{invoice.due_at.astimezone(zone):%-d %b}"
        invoice.total_text = format_money(invoice.total, invoice.currency)
        invoice.amount_due_text = format_money(invoice.amount_due, invoice.currency)
        invoice.credited_text = (
            format_money(invoice.amount_credited, invoice.currency)
            if invoice.amount_credited > 0
            else ""
        )
        invoice.credit_applied_text = (
            format_money(invoice.credit_applied, invoice.currency)
            if invoice.credit_applied > 0
            else ""
        )
        invoice.credit_notes_listed = getattr(invoice, "credit_notes_listed", [])
        for credit_note in invoice.credit_notes_listed:
            _credit_note_texts(credit_note, credit_note_url, zone)
    return rows


@register.simple_tag
def credit_note_history_rows(credit_notes, organisation) -> list:
    """The page's credit notes as rows of their own (billing.selectors.credit_note_history),
    each with the texts `invoice_history_rows` gives a credit note, `invoice_pdf_url` and the
    `period_text` of its invoice."""
    invoice_url = _url_maker("billing:invoice_pdf", organisation)
    credit_note_url = _url_maker("billing:credit_note_pdf", organisation)
    zone = timezone.get_current_timezone()
    rows = list(credit_notes)
    for credit_note in rows:
        _credit_note_texts(credit_note, credit_note_url, zone)
        invoice = credit_note.invoice
        start, end = invoice.period_start.astimezone(zone), invoice.period_end.astimezone(zone)
        credit_note.invoice_pdf_url = invoice_url(invoice.number)
        credit_note.period_text = f"{start:%-d %b %Y} – {end:%-d %b %Y}"
    return rows


def _credit_note_texts(credit_note: CreditNote, credit_note_url, zone) -> None:
    credit_note.pdf_url = credit_note_url(credit_note.number) if credit_note.has_pdf else ""
    credit_note.issued_text = f"{credit_note.issued_at.astimezone(zone):%-d %b %Y}"
    credit_note.total_text = format_money(credit_note.total, credit_note.currency)
    credit_note.outcome_text, credit_note.outcome_badge = customer_outcome(credit_note)
