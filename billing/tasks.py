from celery import shared_task
from django.utils import timezone

from billing.documents import invoice_document_original
from billing.models import Invoice
from core.observability import log_context, register_task_ids

# The name as a string: reading `.name` off the task would finalise the Celery app during this
# import, and finalising imports every app's jobs, which import the billing services that are
# still importing this module.
RENDER_INVOICE_DOCUMENTS = "billing.render_invoice_documents"


@shared_task(name=RENDER_INVOICE_DOCUMENTS, acks_late=True)
def render_invoice_documents(invoice_ids: list[int]) -> int:
    """Render the original PDFs of just-issued invoices (the scheduled job catches up misses)."""
    rendered = 0
    for invoice in Invoice.objects.filter(pk__in=invoice_ids).select_related("organisation"):
        with log_context(organisation_id=invoice.organisation_id, invoice_id=invoice.pk):
            invoice_document_original(invoice=invoice, now=timezone.now())
        rendered += 1
    return rendered


def _invoice_ids(invoice_ids) -> dict:
    rows = list(Invoice.objects.filter(pk__in=list(invoice_ids)).values_list("pk", "organisation"))
    if len(rows) == 1:
        return {"invoice_id": rows[0][0], "organisation_id": rows[0][1]}
    organisations = sorted({organisation for _, organisation in rows})
    ids = {"invoice_ids": sorted(pk for pk, _ in rows)}
    if len(organisations) == 1:
        ids["organisation_id"] = organisations[0]
    return ids


register_task_ids(RENDER_INVOICE_DOCUMENTS, _invoice_ids)
