"""Invoice History > Export CSV: the list the filters show, for an accountant's spreadsheet.

One row per invoice, newest first, each followed by its credit notes, as the page lists them;
with the type Credit note (or a CN-… number searched) one row per credit note. Credit notes
carry negative amounts, so a column's sum is what was billed net of corrections.

Money is a decimal string in major units (`129.00`, `-25.00`: our amounts have two decimals,
core.money), dates are ISO days in the organisation's zone (the dates the page shows), and
statuses are their codes. Rows are read with a server-side cursor a chunk at a time and written
out in pieces of about CHUNK_BYTES, so memory stays flat however long the list is.
"""

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

from django.db.models import Prefetch

from accounts.models import Organisation
from billing.models import CreditNote, Invoice
from billing.selectors import HistoryFilters, credit_notes_filtered, invoices_filtered
from core.money import money_decimal

COLUMNS = (
    "type",
    "number",
    "invoice",
    "date",
    "period_start",
    "period_end",
    "net",
    "tax",
    "total",
    "currency",
    "status",
    "credited",
    "credit_applied",
    "paid",
    "due",
)
CREDIT_NOTE = "credit_note"
CHUNK_ROWS = 500
CHUNK_BYTES = 64 * 1024

_INVOICE_COLUMNS = (
    "id",
    "number",
    "kind",
    "status",
    "currency",
    "subtotal",
    "tax_amount",
    "total",
    "amount_paid",
    "credit_applied",
    "amount_credited",
    "amount_credited_unpaid",
    "period_start",
    "period_end",
    "issued_at",
)
_CREDIT_NOTE_COLUMNS = ("id", "invoice_id", "number", "status", "currency", "subtotal")
_CREDIT_NOTE_COLUMNS += ("tax_amount", "total", "issued_at")


def export_filename(*, organisation: Organisation, year, status, kind, number) -> str:
    """invoice-history-<slug>[-<year>][-<status>][-<type>][-<number>].csv: the filters
    are letters, digits, dashes and underscores (the form allows no other)."""
    parts = ["invoice-history", organisation.slug]
    parts += [str(value).lower() for value in (year, status, kind, number) if value]
    return "-".join(parts) + ".csv"


def invoice_history_csv(
    *, organisation: Organisation, filters: HistoryFilters, zone: ZoneInfo
) -> Iterator[bytes]:
    """The CSV file, header first, in pieces of about CHUNK_BYTES.

    A generator: nothing is read until the response is iterated, after the view has
    returned, so the zone is given rather than taken from the request's active one.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in _rows(organisation=organisation, filters=filters, zone=zone):
        writer.writerow(row)
        if buffer.tell() >= CHUNK_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _rows(*, organisation, filters: HistoryFilters, zone) -> Iterator[tuple]:
    def day(moment: datetime) -> str:
        return moment.astimezone(zone).date().isoformat()

    def credit_note_row(credit_note: CreditNote, invoice: Invoice) -> tuple:
        return (
            CREDIT_NOTE,
            credit_note.number,
            invoice.number,
            day(credit_note.issued_at),
            day(invoice.period_start),
            day(invoice.period_end),
            money_decimal(-credit_note.subtotal),
            money_decimal(-credit_note.tax_amount),
            money_decimal(-credit_note.total),
            credit_note.currency,
            credit_note.status,
            "",
            "",
            "",
            "",
        )

    if filters.credit_notes:
        credit_notes = (
            credit_notes_filtered(CreditNote.objects.filter(organisation=organisation), filters)
            .select_related("invoice")
            .only(
                *_CREDIT_NOTE_COLUMNS,
                "invoice__number",
                "invoice__period_start",
                "invoice__period_end",
            )
            .order_by("-issued_at", "-id")
        )
        for credit_note in credit_notes.iterator(chunk_size=CHUNK_ROWS):
            yield credit_note_row(credit_note, credit_note.invoice)
        return

    listed = CreditNote.objects.only(*_CREDIT_NOTE_COLUMNS).order_by("issued_at", "id")
    invoices = (
        invoices_filtered(Invoice.objects.filter(organisation=organisation), filters)
        .only(*_INVOICE_COLUMNS)
        .order_by("-issued_at", "-id")
        .prefetch_related(Prefetch("credit_notes", queryset=listed, to_attr="listed"))
    )
    for invoice in invoices.iterator(chunk_size=CHUNK_ROWS):
        yield (
            invoice.kind,
            invoice.number,
            "",
            day(invoice.issued_at),
            day(invoice.period_start),
            day(invoice.period_end),
            money_decimal(invoice.subtotal),
            money_decimal(invoice.tax_amount),
            money_decimal(invoice.total),
            invoice.currency,
            invoice.status,
            money_decimal(invoice.amount_credited),
            money_decimal(invoice.credit_applied),
            money_decimal(invoice.amount_paid),
            # Only an open invoice is owed: a void one never was, an uncollectible one was
            # written off; the page shows no amount due for them either.
            money_decimal(invoice.amount_due if invoice.status == Invoice.Status.OPEN else 0),
        )
        for credit_note in invoice.listed:
            yield credit_note_row(credit_note, invoice)
