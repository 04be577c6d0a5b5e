from celery import shared_task
from django.utils import timezone

from billing.models import Invoice
from billing.services import invoice_document_original
from billing_portal.observability import log_context


@shared_task(name="billing.render_invoice_documents", acks_late=True)
def render_invoice_documents(invoice_ids: list[int]) -> int:
    """Render the original PDFs of just-issued invoices (the scheduled job catches up misses)."""
    rendered = 0
    for invoice in Invoice.objects.filter(pk__in=invoice_ids).select_related("organisation"):
        with log_context(organisation_id=invoice.organisation_id, invoice_id=invoice.pk):
            invoice_document_original(invoice=invoice, now=timezone.now())
        rendered += 1
    return rendered
