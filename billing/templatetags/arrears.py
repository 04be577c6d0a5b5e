"""`{% load arrears %}`: what an earlier term still owes, shown on the checkout page."""

from dataclasses import dataclass

from django import template

from accounts.models import Organisation
from billing.arrears import arrears
from billing.models import Invoice

register = template.Library()


@dataclass(frozen=True)
class Owed:
    invoices: list[Invoice]
    amount: int


@register.simple_tag
def arrears_owed(organisation: Organisation) -> Owed:
    """The invoices the checkout charges before the first invoice, and their sum."""
    invoices = arrears(organisation=organisation)
    return Owed(invoices=invoices, amount=sum(invoice.amount_due for invoice in invoices))
