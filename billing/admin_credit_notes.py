"""Ops issue credit notes from Django admin, and see them
(docs/architecture.md#decision-credit-notes-and-the-customer-balance).

Billing staff (`billing.issue_credit_note`) run "Issue credit note" on one invoice, from the
invoice list or the button on the invoice's page: a form says what is credited, why, and
where the money goes, and calls `billing.credit_notes.credit_note_issue`, the one service
that issues them. A refusal re-shows the form with the service's sentence; nothing changed.
Credit notes themselves are read-only here, with their lines, refunds and stored PDF.

Used by billing/admin.py (InvoiceAdmin); registers the CreditNote admin.
"""

import re
from contextlib import contextmanager
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from accounts.audit import Actor
from billing.credit_notes import (
    OPS_OUTCOMES,
    OPS_REASONS,
    credit_note_issue,
    lines_left,
    money_back_left,
)
from billing.models import CreditNote, CreditNoteLine, Invoice, Refund
from core.admin import ReadOnlyModelAdmin, permission_check
from core.errors import ServiceError
from core.http import client_ip
from core.money import format_money

Outcome = CreditNote.Outcome

WHOLE, LINES, AMOUNT = "whole", "lines", "amount"

# What each outcome does, shown under its choice.
OUTCOME_HELP = {
    Outcome.REFUND: "Money back to the card that paid the invoice, through Stripe. "
    "Card-paid invoices only.",
    Outcome.BALANCE: "Kept on the customer's account balance; it comes off their next invoices.",
    Outcome.REFUNDED_OUTSIDE: "You refunded by bank transfer or against the purchase order "
    "yourself: give its reference below.",
    Outcome.REDUCE_DUE: "Reduce the amount due — open invoices only. Nothing goes back; the "
    "invoice owes less, and is settled when nothing is left to pay.",
}

# 1 to 13 digits, then at most 2 decimals: minor units of a BigIntegerField, exactly.
_AMOUNT = re.compile(r"^(\d{1,13})(?:\.(\d+))?$")


def amount_in_minor_units(text: str, currency: str) -> int:
    """What ops typed, in minor units: "100", "100.5", "100.05" -> 10000, 10050, 10005.
    ValidationError for anything else (negative, more than 2 decimals, thousands
    separators, exponents, words)."""
    text = text.strip()
    example = f"e.g. 100.00 for {format_money(10_000, currency)}"
    if text.startswith("-"):
        raise forms.ValidationError("The amount must be more than zero.", code="negative")
    match = _AMOUNT.match(text)
    if match is None:
        raise forms.ValidationError(
            f"Enter the amount in {currency} as digits with a decimal point, {example}.",
            code="invalid",
        )
    if match[2] is not None and len(match[2]) > 2:
        raise forms.ValidationError(
            f"Use at most 2 decimals (cents), {example}.", code="too_many_decimals"
        )
    minor = int(Decimal(text).scaleb(2))
    if minor <= 0:
        raise forms.ValidationError("The amount must be more than zero.", code="zero")
    return minor


class CreditNoteForm(forms.Form):
    """What ops ask for; the rules (how much may be credited, by which outcome) are the
    service's, whose refusals the page shows on the field they name."""

    what = forms.ChoiceField(
        label="What is credited",
        choices=[
            (WHOLE, "The whole remaining amount"),
            (LINES, "Chosen lines"),
            (AMOUNT, "An amount"),
        ],
        widget=forms.RadioSelect,
        error_messages={"required": "Choose what to credit."},
    )
    lines = forms.TypedMultipleChoiceField(
        label="Lines",
        coerce=int,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Each line is credited with what is left of it, tax included.",
    )
    amount = forms.CharField(
        label="Amount",
        required=False,
        max_length=20,
        help_text="Tax included; split over the lines and their tax in proportion.",
    )
    reason = forms.ChoiceField(
        label="Reason", error_messages={"required": "Choose the reason for the credit note."}
    )
    note = forms.CharField(
        label="Note",
        required=False,
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Printed on the credit note the customer gets. "
        'Required when the reason is "Other".',
    )
    outcome = forms.ChoiceField(
        label="What happens to the money",
        choices=[(outcome.value, outcome.label) for outcome in OPS_OUTCOMES],
        widget=forms.RadioSelect,
        error_messages={"required": "Choose what happens to the money."},
    )
    reference = forms.CharField(
        label="Reference",
        required=False,
        max_length=120,
        help_text="The bank transfer or PO refund's reference; printed on the credit note.",
    )
    # What the invoice had credited when the page was shown: a form sent twice (a double
    # click, a reload, the back button) or after someone else's credit note is refused.
    credited_before = forms.IntegerField(
        widget=forms.HiddenInput,
        error_messages={
            "required": "This page is out of date: open it again from the invoice.",
            "invalid": "This page is out of date: open it again from the invoice.",
        },
    )

    def __init__(self, *args, invoice: Invoice, left, **kwargs):
        super().__init__(*args, **kwargs)
        self.invoice = invoice
        self.show_lines(left)
        self.fields["amount"].label = f"Amount ({invoice.currency})"
        self.fields["reason"].choices = [
            ("", "Choose a reason"),
            *((reason.value, reason.label) for reason in OPS_REASONS),
        ]

    def show_lines(self, left) -> None:
        """The lines with something left to credit, each saying how much."""
        self.fields["lines"].choices = [
            (item.line.pk, _line_label(item, self.invoice.currency))
            for item in left
            if item.amount + item.tax_amount > 0
        ]

    def clean_amount(self):
        text = self.cleaned_data["amount"]
        if self.data.get(self.add_prefix("what")) != AMOUNT:
            return None
        if not text.strip():
            raise forms.ValidationError("Enter the amount to credit.", code="required")
        return amount_in_minor_units(text, self.invoice.currency)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("what") == LINES and not cleaned.get("lines") and "lines" not in self.errors:
            self.add_error("lines", "Choose at least one line to credit.")
        return cleaned

    def request(self) -> dict:
        """The service's keyword arguments for what was asked."""
        data = self.cleaned_data
        return {
            "amount": data["amount"] if data["what"] == AMOUNT else None,
            "line_ids": data["lines"] if data["what"] == LINES else None,
            "reason": data["reason"],
            "note": data["note"],
            "outcome": data["outcome"],
            "reference": data["reference"],
        }

    def refused(self, error: ServiceError) -> None:
        """Show the service's refusal on the field it names, if that field is in use."""
        field = error.field
        unused = {AMOUNT: "amount", LINES: "lines"}
        what = self.cleaned_data.get("what")
        if field in unused.values() and unused.get(what) != field:
            field = None
        self.add_error(field if field in self.fields else None, error.message)


@contextmanager
def _one_submission_at_a_time(invoice: Invoice):
    """Hold a session advisory lock on the invoice's credit-note form while one submission is
    checked and issued, so a second one (a double click) waits and then sees the first's
    credit note. A session lock, not a transaction: inside it the service commits the credit
    note and only then calls Stripe."""
    key = invoice.pk % 2_147_483_647
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(hashtext('credit-note-form'), %s)", [key])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext('credit-note-form'), %s)", [key])


def _line_label(item, currency: str) -> str:
    left = format_money(item.amount + item.tax_amount, currency)
    if not item.tax_amount:
        return f"{item.line.description}: {left} left"
    before, tax = format_money(item.amount, currency), format_money(item.tax_amount, currency)
    return f"{item.line.description}: {left} left ({before} + {tax} tax)"


def _done_message(credit_note: CreditNote, invoice: Invoice) -> tuple[str, int]:
    money = format_money(credit_note.total, credit_note.currency)
    if credit_note.outcome == Outcome.REFUND:
        if credit_note.status == CreditNote.Status.REFUND_PENDING:
            what, level = (
                "refund pending: Stripe has not confirmed it yet; the charge job tries again",
                messages.WARNING,
            )
        else:
            what, level = f"refunded to the card, Stripe refund {credit_note.reference}", None
    elif credit_note.outcome == Outcome.BALANCE:
        what, level = "added to the customer balance", None
    elif credit_note.outcome == Outcome.REFUNDED_OUTSIDE:
        what, level = f"refunded outside, reference {credit_note.reference}", None
    else:
        due = format_money(invoice.amount_due, invoice.currency)
        what, level = f"taken off the amount due; {due} still due", None
    return (
        f"Credit note {credit_note.number} issued for {money} on {invoice.number} ({what}).",
        level or messages.SUCCESS,
    )


def credit_note_page(modeladmin, request, invoice: Invoice, *, submitted: bool, hidden: dict):
    """The "Issue credit note" form for `invoice`: (the credit note issued, None) once
    submitted and accepted, else (None, the page to show). Nothing changes until then."""
    left = lines_left(invoice)
    form = CreditNoteForm(request.POST if submitted else None, invoice=invoice, left=left)
    if submitted and form.is_valid():
        with _one_submission_at_a_time(invoice):
            credit_note = _issue_unless_changed(form, request, invoice)
        if credit_note is not None:
            invoice.refresh_from_db()
            message, level = _done_message(credit_note, invoice)
            modeladmin.message_user(request, message, level)
            return credit_note, None
        left = lines_left(invoice)  # as they are now
        form.show_lines(left)
    currency = invoice.currency
    figures = [
        ("Total", invoice.total),
        ("Already credited", invoice.amount_credited),
        ("Left to credit", invoice.amount_uncredited),
        ("Can still go back to the customer", max(money_back_left(invoice), 0)),
        ("Amount due", invoice.amount_due),
    ]
    page = TemplateResponse(
        request,
        "admin/billing/invoice/credit_note.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": f"Issue a credit note on {invoice.number}",
            "invoice": invoice,
            "figures": [(label, format_money(amount, currency)) for label, amount in figures],
            "fully_credited": [item.line for item in left if item.amount + item.tax_amount <= 0],
            "form": form,
            "outcomes": [(radio, OUTCOME_HELP[radio.data["value"]]) for radio in form["outcome"]],
            "hidden": hidden,
            "opts": modeladmin.model._meta,
        },
        status=400 if form.errors else 200,
    )
    return None, page


def _issue_unless_changed(form: CreditNoteForm, request, invoice: Invoice) -> CreditNote | None:
    """The credit note asked for, or None with the form saying why not (nothing written)."""
    invoice.refresh_from_db()
    if form.cleaned_data["credited_before"] != invoice.amount_credited:
        credited = format_money(invoice.amount_credited, invoice.currency)
        form.add_error(
            None,
            f"{invoice.number} was credited since this page was shown ({credited} credited "
            "now): nothing was issued. Check its credit notes, and send the form again only "
            "if another one is still needed.",
        )
        return None
    try:
        return credit_note_issue(
            invoice=invoice,
            actor=Actor(user=request.user, ip_address=client_ip(request)),
            now=timezone.now(),
            **form.request(),
        )
    except ServiceError as error:
        form.refused(error)
        return None


class InvoiceCreditNotes:
    """InvoiceAdmin's part for credit notes: the action, its page on its own URL (the button
    on the invoice's page), and the permission both check."""

    change_form_template = "admin/billing/invoice/change_form.html"

    has_issue_credit_note_permission = permission_check("billing.issue_credit_note")

    @admin.action(
        description="Issue credit note (refund, balance or reduce the amount due)",
        permissions=["issue_credit_note"],
    )
    def issue_credit_note(self, request, queryset):
        invoices = list(queryset.select_related("organisation")[:2])
        if len(invoices) != 1:
            self.message_user(
                request,
                "Choose one invoice at a time: a credit note corrects one invoice. "
                "Nothing was issued.",
                messages.ERROR,
            )
            return None
        [invoice] = invoices
        _, page = credit_note_page(
            self,
            request,
            invoice,
            submitted="apply" in request.POST,
            hidden={
                "action": "issue_credit_note",
                helpers.ACTION_CHECKBOX_NAME: invoice.pk,
                "apply": "1",
            },
        )
        return page

    def credit_note_view(self, request, invoice_pk):
        if not self.has_issue_credit_note_permission(request):
            raise PermissionDenied
        invoice = get_object_or_404(Invoice.objects.select_related("organisation"), pk=invoice_pk)
        credit_note, page = credit_note_page(
            self, request, invoice, submitted=request.method == "POST", hidden={}
        )
        if credit_note is not None:
            return redirect("admin:billing_invoice_change", invoice.pk)
        return page

    def get_urls(self):
        return [
            path(
                "<int:invoice_pk>/credit-note/",
                self.admin_site.admin_view(self.credit_note_view),
                name="billing_invoice_credit_note",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = {"can_issue_credit_note": self.has_issue_credit_note_permission(request)}
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})


# Read-only views of credit notes ------------------------------------------------------------


def _pdf_link(credit_note: CreditNote) -> str:
    return format_html(
        '<a href="{}" download>Download PDF<span class="visually-hidden"> of {}</span></a>',
        reverse("admin:billing_creditnote_pdf", args=[credit_note.pk]),
        credit_note.number,
    )


class CreditNoteInline(admin.TabularInline):
    """The invoice's credit notes, on the invoice's admin page."""

    model = CreditNote
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("number", "issued_at", "total_display", "outcome", "status", "reason", "pdf_link")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).defer("pdf")

    @admin.display(description="Total")
    def total_display(self, obj):
        return format_money(obj.total, obj.currency)

    @admin.display(description="PDF")
    def pdf_link(self, obj):
        return _pdf_link(obj)


class CreditNoteLineInline(admin.TabularInline):
    model = CreditNoteLine
    extra = 0
    can_delete = False
    fields = ("position", "description", "invoice_line", "amount_display", "tax_display")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Amount")
    def amount_display(self, obj):
        return format_money(obj.amount, obj.credit_note.currency)

    @admin.display(description="Tax")
    def tax_display(self, obj):
        return format_money(obj.tax_amount, obj.credit_note.currency)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("credit_note", "invoice_line")


class RefundInline(admin.TabularInline):
    model = Refund
    extra = 0
    can_delete = False
    fields = (
        "status",
        "amount_display",
        "payment_intent_id",
        "processor_id",
        "attempts",
        "failure_message",
        "created_at",
        "completed_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Amount")
    def amount_display(self, obj):
        return format_money(obj.amount, obj.currency)


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyModelAdmin):
    """Issued credit notes: evidence, never edited. "Refund pending" ones wait for Stripe;
    the charge job sends them again."""

    list_display = (
        "number",
        "invoice",
        "organisation",
        "total_display",
        "outcome",
        "status",
        "reason",
        "issued_at",
    )
    list_filter = ("status", "outcome", "reason")
    search_fields = ("number", "invoice__number", "organisation__name", "reference")
    list_select_related = ("invoice", "organisation")
    date_hierarchy = "issued_at"
    ordering = ("-issued_at", "-id")
    fields = (
        "number",
        "invoice",
        "organisation",
        "status",
        "outcome",
        "reference",
        "reason",
        "note",
        "subtotal_display",
        "tax_display",
        "total_display",
        "issued_at",
        "created_by",
        "pdf_link",
    )
    readonly_fields = fields
    inlines = [CreditNoteLineInline, RefundInline]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("pdf")

    @admin.display(description="Total", ordering="total")
    def total_display(self, obj):
        return format_money(obj.total, obj.currency)

    @admin.display(description="Before tax")
    def subtotal_display(self, obj):
        return format_money(obj.subtotal, obj.currency)

    @admin.display(description="Tax")
    def tax_display(self, obj):
        return format_money(obj.tax_amount, obj.currency)

    @admin.display(description="PDF")
    def pdf_link(self, obj):
        return _pdf_link(obj)

    def get_urls(self):
        return [
            path(
                "<int:credit_note_pk>/pdf/",
                self.admin_site.admin_view(self.pdf_view),
                name="billing_creditnote_pdf",
            ),
            *super().get_urls(),
        ]

    def pdf_view(self, request, credit_note_pk):
        """The PDF as the customer got it; staff who may view credit notes only."""
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        if not self.has_view_permission(request):
            raise PermissionDenied
        credit_note = get_object_or_404(
            CreditNote.objects.filter(pdf__isnull=False), pk=credit_note_pk
        )
        response = HttpResponse(bytes(credit_note.pdf), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{credit_note.number}.pdf"'
        return response
