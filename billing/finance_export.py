"""The finance export: every invoice and credit note of a month or a quarter, for the accountant
(docs/architecture.md#decision-the-ops-charts-and-the-finance-export).

One row per document, oldest first: invoices with their amounts, credit notes with negative
amounts (as Invoice History's export writes them, so a column's sum is what was billed net of
corrections). Void invoices are listed (the numbering has no gaps) with their status; the
dashboard's "invoiced" leaves them out. Customer name, country and VAT number are those printed on
the invoice (its billing details snapshot); a credit note takes its invoice's.

Postgres writes the CSV (`COPY (SELECT ...) TO STDOUT`), one statement whatever the number of
rows, handed on in chunks as usage.export does, rows ended by CRLF. Amounts are plain decimals
in major units (`129.00`, `-25.00`, core.money.money_decimal's format), dates ISO days in UTC
(the dashboard's months are UTC months). A text field starting with = + - @ or a tab or carriage
return gets a leading apostrophe, so a spreadsheet never runs it as a formula.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from billing.models import CreditNote, Refund
from core.calendar_months import utc_month
from core.csv_copy import copy_csv

COLUMNS = (
    "number",
    "type",
    "date",
    "organisation",
    "country",
    "vat_number",
    "reverse_charge",
    "net",
    "tax_rate",
    "tax",
    "total",
    "currency",
    "paid",
    "credited",
    "refunded",
    "status",
)
INVOICE, CREDIT_NOTE = "invoice", "credit_note"
REVERSE_CHARGE = "reverse_charge"  # billing.tax's rule


@dataclass(frozen=True)
class ExportPeriod:
    """A calendar month or quarter in UTC: [start, end)."""

    start: datetime
    end: datetime
    slug: str  # "2026-11" or "2026-Q4", for the file name
    label: str  # "November 2026" or "Q4 2026 (October – December)"


class PeriodError(ValueError):
    pass


def export_period(*, kind: str, year: int, number: int, now: datetime) -> ExportPeriod:
    """The month (`number` 1-12) or quarter (1-4) of `year`; one that has not started by `now`
    is refused (nothing to export yet), the current one gives what was issued so far."""
    if not 2000 <= year <= 9998:
        raise PeriodError(f"{year} is not a year we can export.")
    if kind == "month":
        if not 1 <= number <= 12:
            raise PeriodError("Choose a month from 1 to 12.")
        start, end = utc_month(year, number), utc_month(year, number + 1)
        slug, label = f"{year}-{number:02d}", f"{start:%B %Y}"
    elif kind == "quarter":
        if not 1 <= number <= 4:
            raise PeriodError("Choose a quarter from Q1 to Q4.")
        start, end = utc_month(year, 3 * number - 2), utc_month(year, 3 * number + 1)
        last = utc_month(year, 3 * number)
        slug, label = f"{year}-Q{number}", f"Q{number} {year} ({start:%B} – {last:%B})"
    else:
        raise PeriodError("Choose a month or a quarter.")
    if start > now:
        raise PeriodError(f"{label} has not started yet.")
    return ExportPeriod(start=start, end=end, slug=slug, label=label)


def export_filename(period: ExportPeriod) -> str:
    assert re.fullmatch(r"\d{4}-(\d{2}|Q\d)", period.slug)
    return f"finance-export-{period.slug}.csv"


# The outer SELECT writes the columns as the module docstring says: a text field a spreadsheet
# could run as a formula gets a leading apostrophe, amounts become decimals in major units.
# A credit note takes its invoice's customer and tax; its amounts are negative. What a credit
# note gave back: its card refunds Stripe confirmed, or all of it when it was refunded by bank
# transfer (outcome "refunded outside", no Refund row).
_SELECT = r"""
WITH card_refunds AS (
  SELECT credit_note_id, sum(amount) AS amount FROM billing_refund
  WHERE status = %(succeeded)s GROUP BY credit_note_id
),
credit_notes AS (
  SELECT c.*, CASE WHEN c.outcome = %(outside)s THEN c.total
                   ELSE coalesce(cr.amount, 0) END AS refunded
  FROM billing_creditnote c LEFT JOIN card_refunds cr ON cr.credit_note_id = c.id
),
invoice_refunds AS (
  SELECT invoice_id, sum(refunded) AS refunded FROM credit_notes GROUP BY invoice_id
),
documents AS (
  SELECT i.number, %(invoice)s AS type, i.issued_at, i.organisation_id, i.billing_details,
         i.tax_rule, i.tax_rate_bp, i.subtotal, i.tax_amount, i.total, i.currency,
         i.amount_paid AS paid, i.amount_credited AS credited,
         coalesce(r.refunded, 0) AS refunded, i.status
  FROM billing_invoice i LEFT JOIN invoice_refunds r ON r.invoice_id = i.id
  WHERE i.issued_at >= %(start)s AND i.issued_at < %(end)s
  UNION ALL
  SELECT c.number, %(credit_note)s, c.issued_at, c.organisation_id, i.billing_details,
         i.tax_rule, i.tax_rate_bp, -c.subtotal, -c.tax_amount, -c.total, c.currency,
         NULL, NULL, -c.refunded, c.status
  FROM credit_notes c JOIN billing_invoice i ON i.id = c.invoice_id
  WHERE c.issued_at >= %(start)s AND c.issued_at < %(end)s
),
named AS (
  SELECT d.*,
         coalesce(nullif(d.billing_details->>'company_name', ''), o.name) AS organisation,
         nullif(d.billing_details->>'country', '') AS country,
         nullif(d.billing_details->>'vat_number', '') AS vat_number
  FROM documents d JOIN accounts_organisation o ON o.id = d.organisation_id
)
SELECT number,
       type,
       to_char(issued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS date,
       CASE WHEN left(organisation, 1) IN ('=', '+', '-', '@', chr(9), chr(13))
            THEN chr(39) || organisation ELSE organisation END AS organisation,
       CASE WHEN left(country, 1) IN ('=', '+', '-', '@', chr(9), chr(13))
            THEN chr(39) || country ELSE country END AS country,
       CASE WHEN left(vat_number, 1) IN ('=', '+', '-', '@', chr(9), chr(13))
            THEN chr(39) || vat_number ELSE vat_number END AS vat_number,
       CASE WHEN tax_rule = %(reverse_charge)s THEN 'yes' ELSE 'no' END AS reverse_charge,
       (subtotal::numeric / 100)::numeric(20, 2) AS net,
       (tax_rate_bp::numeric / 100)::numeric(6, 2) AS tax_rate,
       (tax_amount::numeric / 100)::numeric(20, 2) AS tax,
       (total::numeric / 100)::numeric(20, 2) AS total,
       currency,
       (paid::numeric / 100)::numeric(20, 2) AS paid,
       (credited::numeric / 100)::numeric(20, 2) AS credited,
       (refunded::numeric / 100)::numeric(20, 2) AS refunded,
       status
FROM named
ORDER BY issued_at, type DESC, number
"""


def finance_export_csv(*, period: ExportPeriod, using: str = "default") -> Iterator[bytes]:
    """The CSV file, header first, in chunks (core.csv_copy).

    Lazy: no query runs until the response is iterated, after the view has returned.
    """
    params = {
        "start": period.start,
        "end": period.end,
        "invoice": INVOICE,
        "credit_note": CREDIT_NOTE,
        "succeeded": Refund.Status.SUCCEEDED,
        "outside": CreditNote.Outcome.REFUNDED_OUTSIDE,
        "reverse_charge": REVERSE_CHARGE,
    }
    return copy_csv(_SELECT.strip(), params, using=using)
