"""Reads for billing pages, always scoped to an organisation."""

from django.db.models import BooleanField, ExpressionWrapper, Prefetch, Q, QuerySet
from django.http import Http404

from accounts.models import Organisation
from billing.models import (
    BillingProfile,
    CreditNote,
    Invoice,
    InvoiceDocument,
    Payment,
    PaymentMethod,
)
from subscriptions.models import Plan, Subscription


def invoice_list(*, organisation: Organisation) -> QuerySet[Invoice]:
    """Newest first, each with its revised copies and its credit notes (never the PDF
    bytes: one query each for the page, however many rows); only the columns Invoice History
    shows (not the billing details snapshot, a JSON document to decode per row)."""
    revised = (
        InvoiceDocument.objects.filter(kind=InvoiceDocument.Kind.REVISED)
        .only("id", "invoice_id", "kind", "created_at")
        .order_by("created_at", "id")
    )
    credit_notes = (
        CreditNote.objects.filter(organisation=organisation)
        .only("id", "invoice_id", "number", "outcome", "status", "currency", "total", "issued_at")
        .annotate(has_pdf=ExpressionWrapper(Q(pdf__isnull=False), output_field=BooleanField()))
        .order_by("issued_at", "id")
    )
    return (
        Invoice.objects.filter(organisation=organisation)
        .only(
            "id",
            "number",
            "kind",
            "status",
            "currency",
            "total",
            # Invoice.amount_due's terms: an open invoice shows what is still owed.
            "credit_applied",
            "amount_paid",
            "amount_credited_unpaid",
            "plan_name",
            "period_start",
            "period_end",
            "issued_at",
            "due_at",
            "amount_credited",
        )
        .order_by("-issued_at", "-id")
        .prefetch_related(
            Prefetch("documents", queryset=revised, to_attr="revised_copies"),
            Prefetch("credit_notes", queryset=credit_notes, to_attr="credit_notes_listed"),
        )
    )


def invoice_revised_copy_get(*, invoice: Invoice, document_id: int) -> InvoiceDocument:
    document = InvoiceDocument.objects.filter(
        invoice=invoice, kind=InvoiceDocument.Kind.REVISED, pk=document_id
    ).first()
    if document is None:
        raise Http404("No such revised copy.")
    return document


def credit_note_get(*, organisation: Organisation, number: str) -> CreditNote:
    """One of the organisation's credit notes by number; 404 for any other organisation's."""
    credit_note = (
        CreditNote.objects.select_related("invoice")
        .filter(organisation=organisation, number=number, pdf__isnull=False)
        .first()
    )
    if credit_note is None:
        raise Http404("No such credit note.")
    return credit_note


def invoice_get(*, organisation: Organisation, number: str) -> Invoice:
    invoice = (
        Invoice.objects.select_related("organisation")
        .filter(organisation=organisation, number=number)
        .first()
    )
    if invoice is None:
        raise Http404("No such invoice.")
    return invoice


def payment_method_current(*, organisation: Organisation) -> PaymentMethod | None:
    return PaymentMethod.objects.filter(
        organisation=organisation, status=PaymentMethod.Status.ACTIVE
    ).first()


def billing_profile_for(*, organisation: Organisation) -> BillingProfile:
    """The organisation's profile, or an unsaved blank one (nothing entered yet)."""
    profile = BillingProfile.objects.filter(organisation=organisation).first()
    return profile or BillingProfile(organisation=organisation)


def subscription_for_upgrade(*, organisation: Organisation) -> Subscription | None:
    """The subscription with its plan and prices, as Upgrade Plan quotes from them."""
    return (
        Subscription.objects.select_related("plan", "organisation")
        .prefetch_related("plan__prices")
        .filter(organisation=organisation)
        .first()
    )


def upgrade_awaiting_confirmation(*, subscription: Subscription) -> Invoice | None:
    """The open upgrade invoice whose charge waits for the customer's bank (3-D Secure)."""
    return (
        Invoice.objects.filter(
            subscription=subscription,
            kind=Invoice.Kind.UPGRADE,
            status=Invoice.Status.OPEN,
            payments__status=Payment.Status.REQUIRES_ACTION,
        )
        .select_related("organisation")
        .first()
    )


def plan_offered(*, code: str) -> Plan | None:
    """A public plan by its code, or None when there is none (or no longer offered)."""
    return Plan.objects.filter(code=code, is_public=True).first()
