"""Issued invoices built straight in the database, for the PDF tests.

They bypass the billing services on purpose: the PDF only reads an Invoice and its lines, so the
tests can state every printed value exactly.
"""

from datetime import datetime
from decimal import Decimal
from itertools import count
from zoneinfo import ZoneInfo

from billing.models import Invoice, InvoiceLine
from core.money import round_half_up
from tests.accounts.factories import OrganisationFactory

_numbers = count(1)

BERLIN = ZoneInfo("Europe/Berlin")


def local(year, month, day, hour=0, minute=0, *, zone=BERLIN) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


def billing_details(**overrides) -> dict:
    """A snapshot in BillingProfile.snapshot() format."""
    return {
        "company_name": "Acme Trading Ltd",
        "address_line1": "12 Grand Canal Street",
        "address_line2": "",
        "city": "Dublin",
        "postal_code": "D02 F654",
        "region": "",
        "country": "IE",
        "country_name": "Ireland",
        "vat_number": "IE6388047V",
        "po_number": "",
        "email": "accounts@acme.example",
        **overrides,
    }


def plan_line(description="Professional plan (monthly)", unit_amount=49_900, **fields) -> dict:
    return {
        "kind": InvoiceLine.Kind.PLAN,
        "description": description,
        "unit_amount": unit_amount,
        **fields,
    }


def issued_invoice(
    *,
    organisation=None,
    lines=None,
    tax_rule="standard",
    tax_name="VAT",
    tax_rate_bp=2300,
    tax_note="",
    status=Invoice.Status.OPEN,
    amount_paid=None,
    paid_at=None,
    details=None,
    **fields,
) -> Invoice:
    """An issued invoice of a Europe/Berlin organisation for December 2026, by default.

    `lines` are dicts of InvoiceLine fields; `amount` defaults to quantity x unit_amount, and the
    invoice totals follow from the lines and the tax rate. Any Invoice field can be overridden.
    """
    if organisation is None:
        organisation = OrganisationFactory(time_zone="Europe/Berlin")
    lines = lines if lines is not None else [plan_line()]
    rows = []
    for position, spec in enumerate(lines, start=1):
        spec = {"kind": InvoiceLine.Kind.PLAN, "quantity": 1, **spec}
        spec.setdefault("amount", spec["quantity"] * spec["unit_amount"])
        rows.append(InvoiceLine(position=position, **spec))
    subtotal = sum(row.amount for row in rows)
    tax_amount = round_half_up(Decimal(subtotal) * tax_rate_bp / 10_000)
    total = subtotal + tax_amount
    issued_at = fields.pop("issued_at", local(2026, 12, 1, 0, 5))
    values = {
        "organisation": organisation,
        "number": f"INV-2026-{next(_numbers):06d}",
        "kind": Invoice.Kind.SUBSCRIPTION,
        "status": status,
        "currency": "EUR",
        "subtotal": subtotal,
        "tax_amount": tax_amount,
        "total": total,
        "amount_paid": total if amount_paid is None and status == Invoice.Status.PAID else 0,
        "tax_rule": tax_rule,
        "tax_rate_bp": tax_rate_bp,
        "tax_name": tax_name,
        "tax_note": tax_note,
        "plan_name": "Professional",
        "billing_cycle": "monthly",
        "period_start": local(2026, 12, 1),
        "period_end": local(2027, 1, 1),
        "billing_details": details if details is not None else billing_details(),
        "payment_method_kind": "card",
        "issued_at": issued_at,
        "due_at": issued_at,
        "paid_at": paid_at,
        **fields,
    }
    if amount_paid is not None:
        values["amount_paid"] = amount_paid
    invoice = Invoice.objects.create(**values)
    for row in rows:
        row.invoice = invoice
    InvoiceLine.objects.bulk_create(rows)
    return invoice
