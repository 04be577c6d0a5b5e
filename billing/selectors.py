"""Reads for billing pages, always scoped to an organisation."""

from dataclasses import dataclass
from datetime import datetime

from django.db.models import (
    BooleanField,
    ExpressionWrapper,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
)
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


@dataclass(frozen=True)
class HistoryFilters:
    """What Invoice History lists (billing.forms.InvoiceHistoryFilterForm makes it)."""

    start: datetime | None = None  # issued at or after
    end: datetime | None = None  # issued before
    status: str = ""  # an Invoice.Status; invoices only
    kind: str = ""  # an Invoice.Kind; invoices only
    credit_notes: bool = False  # credit notes as rows of their own, instead of invoices
    number: str = ""  # the upper-cased beginning of an INV-… or CN-… number


def invoice_history_years(*, organisation: Organisation, zone) -> list[int]:
    """The years, newest first, from the organisation's first invoice to its last invoice or
    credit note, in `zone` (the organisation's: the dates Invoice History shows). One query,
    each end read from the (organisation, issued_at) indexes."""

    def end(model, order: str) -> Subquery:
        rows = model.objects.filter(organisation=organisation).order_by(order)
        return Subquery(rows.values("issued_at")[:1])

    found = (
        Organisation.objects.filter(pk=organisation.pk)
        .values(
            first=end(Invoice, "issued_at"),
            last=end(Invoice, "-issued_at"),
            last_credit_note=end(CreditNote, "-issued_at"),
        )
        .get()
    )
    if found["first"] is None:
        return []
    last = max(moment for moment in (found["last"], found["last_credit_note"]) if moment)
    return list(range(last.astimezone(zone).year, found["first"].astimezone(zone).year - 1, -1))


def invoices_filtered(queryset: QuerySet[Invoice], filters: HistoryFilters) -> QuerySet[Invoice]:
    """`queryset` (one organisation's invoices) narrowed to what `filters` let through."""
    if filters.status:
        queryset = queryset.filter(status=filters.status)
    if filters.kind:
        queryset = queryset.filter(kind=filters.kind)
    return _issued_and_numbered(queryset, filters)


def credit_notes_filtered(
    queryset: QuerySet[CreditNote], filters: HistoryFilters
) -> QuerySet[CreditNote]:
    """`queryset` (one organisation's credit notes) narrowed to what `filters` let through:
    the year and the number (status and kind are the invoices')."""
    return _issued_and_numbered(queryset, filters)


def _issued_and_numbered(queryset: QuerySet, filters: HistoryFilters) -> QuerySet:
    if filters.start is not None:
        queryset = queryset.filter(issued_at__gte=filters.start)
    if filters.end is not None:
        queryset = queryset.filter(issued_at__lt=filters.end)
    if filters.number:
        # Numbers are stored upper-case; the form upper-cases what is searched.
        queryset = queryset.filter(number__startswith=filters.number)
    return queryset


def invoice_history(*, organisation: Organisation, filters: HistoryFilters) -> QuerySet[Invoice]:
    """Invoice History's invoices (`invoice_list`'s columns, copies and credit notes) that
    `filters` let through; the view pages them by keyset on (issued_at, id)."""
    return invoices_filtered(invoice_list(organisation=organisation), filters)


def credit_note_history(
    *, organisation: Organisation, filters: HistoryFilters
) -> QuerySet[CreditNote]:
    """Invoice History's credit notes as rows of their own, each with the number and period
    of its invoice; the view pages them by keyset on (issued_at, id)."""
    return (
        credit_notes_filtered(CreditNote.objects.filter(organisation=organisation), filters)
        .select_related("invoice")
        .only(
            "id",
            "invoice_id",
            "number",
            "outcome",
            "status",
            "currency",
            "total",
            "issued_at",
            "invoice__number",
            "invoice__plan_name",
            "invoice__period_start",
            "invoice__period_end",
        )
        .annotate(has_pdf=ExpressionWrapper(Q(pdf__isnull=False), output_field=BooleanField()))
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
