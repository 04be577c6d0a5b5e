"""The customer balance: credit an organisation holds with us, per currency
(docs/architecture.md#decision-credit-notes-and-the-customer-balance).

A credit note whose outcome is "credit to the customer balance" adds to it, and so may ops
(an adjustment, with a reason). Credits are used oldest first: applied to the next invoices
before any charge (a "Credit applied (CN-…)" line below the tax), or taken back by an ops
adjustment. Each use names the credit it draws on, whose `remaining` falls; the balance is
the sum of what remains, and never goes below zero.
"""

from datetime import datetime

from django.db.models import Sum

from accounts.models import Organisation
from billing.models import BalanceEntry, CreditNote


def balance_credit_from_note(*, credit_note: CreditNote, now: datetime) -> BalanceEntry:
    """The balance grows by a credit note's total (caller's transaction)."""
    return BalanceEntry.objects.create(
        organisation_id=credit_note.organisation_id,
        currency=credit_note.currency,
        kind=BalanceEntry.Kind.CREDIT_NOTE,
        amount=credit_note.total,
        remaining=credit_note.total,
        credit_note=credit_note,
        description=f"Credit note {credit_note.number} ({credit_note.invoice.number})",
        created_at=now,
        created_by=credit_note.created_by,
    )


def balance_of(*, organisation: Organisation, currency: str) -> int:
    """What the organisation holds in `currency`: the credits' remaining amounts."""
    return (
        BalanceEntry.objects.filter(
            organisation=organisation, currency=currency, remaining__gt=0
        ).aggregate(total=Sum("remaining"))["total"]
        or 0
    )
