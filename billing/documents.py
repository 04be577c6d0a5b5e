"""Invoice documents: the original PDF rendered at issue, and the revised copies ops issue.

The original is never changed once stored; a revised copy is a new document beside it, with
the organisation's current billing details. Rendering itself is billing.pdf's job.
"""

import logging
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef

from accounts.audit import Actor, audit_record, reason_change
from accounts.emails import email_send
from accounts.selectors import billing_recipients
from billing.details import billing_details_snapshot
from billing.models import BillingProfile, Invoice, InvoiceDocument
from billing.pdf import invoice_pdf_bytes
from core.errors import ServiceError
from core.links import absolute_url
from core.observability import log_context

# The logger name from before billing.services was split: log searches and alerts use it.
logger = logging.getLogger("billing.services")


def invoice_document_original(*, invoice: Invoice, now: datetime) -> InvoiceDocument:
    """The PDF rendered when the invoice was issued; rendered now if that has not happened yet.

    Rendering is idempotent: the unique constraint keeps one original per invoice.
    """
    document = InvoiceDocument.objects.filter(
        invoice=invoice, kind=InvoiceDocument.Kind.ORIGINAL
    ).first()
    if document is not None:
        return document
    pdf = invoice_pdf_bytes(invoice=invoice)
    try:
        with transaction.atomic():
            document = InvoiceDocument.objects.create(
                invoice=invoice, kind=InvoiceDocument.Kind.ORIGINAL, pdf=pdf, created_at=now
            )
            _email_invoice_issued(invoice)
    except IntegrityError:  # another worker stored it first
        document = InvoiceDocument.objects.get(invoice=invoice, kind=InvoiceDocument.Kind.ORIGINAL)
    return document


def invoice_revised_copy_issue(
    *, invoice: Invoice, actor: Actor, reason: str, now: datetime
) -> InvoiceDocument:
    """Ops issue a revised copy of an issued invoice (docs/architecture.md#billing): a new PDF
    with the organisation's current billing details, marked "Revised" with today's date, kept
    beside the original, which is never changed. Amounts stay those of the original."""
    reason = reason.strip()
    if not reason:
        raise ServiceError("Give the reason for the revised copy.", field="reason")
    if invoice.status == Invoice.Status.VOID:
        raise ServiceError(f"Invoice {invoice.number} is void; it has no copy to revise.")
    # The original first, so it keeps the details it was issued with.
    invoice_document_original(invoice=invoice, now=now)
    profile = BillingProfile.objects.filter(organisation_id=invoice.organisation_id).first()
    details = billing_details_snapshot(organisation=invoice.organisation, profile=profile)
    pdf = invoice_pdf_bytes(invoice=invoice, revised_at=now, billing_details=details)
    with transaction.atomic():
        document = InvoiceDocument.objects.create(
            invoice=invoice,
            kind=InvoiceDocument.Kind.REVISED,
            pdf=pdf,
            created_at=now,
            created_by=actor.user,
        )
        audit_record(
            organisation=invoice.organisation,
            actor=actor,
            action="billing.revised_copy_issued",
            target=invoice,
            target_label=invoice.number,
            changes=reason_change(reason),
            now=now,
        )
    return document


def invoice_documents_render_pending(*, now: datetime, limit: int = 200) -> int:
    """Render the original PDF of invoices that do not have one yet (a scheduled job)."""
    pending = (
        Invoice.objects.filter(
            ~Exists(
                InvoiceDocument.objects.filter(
                    invoice=OuterRef("pk"), kind=InvoiceDocument.Kind.ORIGINAL
                )
            )
        )
        .select_related("organisation")
        .order_by("issued_at", "pk")[:limit]
    )
    rendered = 0
    for invoice in pending:
        with log_context(organisation_id=invoice.organisation_id, invoice_id=invoice.pk):
            try:
                invoice_document_original(invoice=invoice, now=now)
            except Exception:
                # One invoice that cannot be rendered must not hold back the others; it is
                # tried again on the next run and the error names it.
                logger.exception("Could not render the PDF of invoice %s", invoice.number)
                continue
        rendered += 1
    return rendered


def invoice_url(invoice: Invoice) -> str:
    return absolute_url("billing:invoices", invoice.organisation.slug)


def _email_invoice_issued(invoice: Invoice) -> None:
    email_send(
        template="invoice_issued",
        to=billing_recipients(organisation=invoice.organisation),
        context={
            "invoice": invoice,
            "invoice_url": invoice_url(invoice),
            # What is left once the customer balance was applied at issue.
            "to_pay": invoice.total - invoice.credit_applied,
        },
        organisation=invoice.organisation,
    )
