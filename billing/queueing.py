"""Background work queued by the billing services once their transaction commits.

The services import this module, never billing.tasks: the task module imports the services
it runs, so the import only goes one way (services -> queueing -> tasks -> documents).
"""

from collections.abc import Iterable

from django.db import transaction

from billing.models import Invoice
from billing.tasks import render_invoice_documents
from core.queueing import enqueue


def queue_invoice_documents(invoices: Iterable[Invoice]) -> None:
    """Render PDFs and send "invoice issued" emails in the background once committed.

    A broker that is down only delays them: the render_invoice_pdfs job catches up.
    """
    ids = [invoice.pk for invoice in invoices]
    if ids:
        transaction.on_commit(lambda: _enqueue_documents(ids))


def _enqueue_documents(ids: list[int]) -> None:
    enqueue(render_invoice_documents, ids, catch_up="render_invoice_pdfs")
