"""Arrears: invoices still owed from an ended term, settled before a new term starts.

A subscription that ended while its payments failed (cancelled in dunning; the case closes at
the end) or whose final overage invoice was not paid leaves open invoices behind. They stay
owed: choosing a plan again shows them ("You still owe ..."), the checkout charges them
before the new term's first invoice (billing.checkout), and the new term starts only once
they are paid (billing.invoicing.subscription_start refuses otherwise).
"""

from accounts.models import Organisation
from billing.models import Invoice
from subscriptions.models import Subscription

Status = Subscription.Status


def arrears(*, organisation: Organisation) -> list[Invoice]:
    """The organisation's open invoices from an earlier term, oldest first.

    Only an ended subscription, or one choosing a plan again (incomplete), has arrears; an
    incomplete one's own first invoice is issued at its anchor, so only invoices issued
    before that are from an earlier term.
    """
    subscription = (
        Subscription.objects.filter(organisation=organisation).only("status", "anchor_at").first()
    )
    if subscription is None or subscription.status not in (Status.ENDED, Status.INCOMPLETE):
        return []
    invoices = Invoice.objects.filter(organisation=organisation, status=Invoice.Status.OPEN)
    if subscription.status == Status.INCOMPLETE:
        invoices = invoices.filter(issued_at__lt=subscription.anchor_at)
    return list(invoices.order_by("issued_at", "pk"))
