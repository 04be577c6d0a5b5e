"""`{% load balance %}`: the customer balance on the Billing tabs and on the pages that
charge (checkout, upgrade)."""

from dataclasses import dataclass

from django import template

from accounts.models import Organisation
from billing.balance import balance_to_apply
from billing.models import BalanceEntry

register = template.Library()


@register.simple_tag
def balance_tab_shown(organisation: Organisation) -> bool:
    """Balance is a tab once the organisation has, or had, any credit: one indexed query."""
    return BalanceEntry.objects.filter(organisation=organisation).exists()


@dataclass(frozen=True)
class BalanceUse:
    applied: int  # paid from the balance
    rest: int  # charged to the card


@register.simple_tag
def balance_use(organisation: Organisation, currency: str, amount: int) -> BalanceUse:
    """How an invoice of `amount` confirmed now would be paid: first from the customer
    balance (billing.balance), the rest by card."""
    applied = balance_to_apply(organisation=organisation, currency=currency, amount=amount)
    return BalanceUse(applied=applied, rest=amount - applied)
