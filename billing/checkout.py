"""Checkout: the card entered, the subscription's first invoice, and its charge, in one call.

The subscription waits (incomplete) until that first invoice is paid; a declined or
unanswered charge leaves the invoice open, and choosing again reuses it
(billing.invoicing.subscription_start).
"""

from dataclasses import dataclass
from datetime import datetime

from accounts.audit import Actor
from accounts.models import Organisation
from billing.arrears import arrears
from billing.cards import card_setup_complete
from billing.invoicing import subscription_start
from billing.models import Invoice, Payment
from billing.payments import ChargeOutcome, charge_outcome, invoice_charge
from billing.selectors import payment_method_current
from core.errors import ServiceError
from subscriptions.models import Plan


@dataclass(frozen=True)
class Checkout:
    # The new term's first invoice; or the earlier term's invoice whose charge did not go
    # through, when one was owed (no first invoice is issued then).
    invoice: Invoice
    payment: Payment | None

    @property
    def outcome(self) -> ChargeOutcome:
        if self.payment is None and self.invoice.status == Invoice.Status.PAID:
            return ChargeOutcome.PAID  # the customer balance paid it: nothing was charged
        return charge_outcome(self.payment)


def subscription_checkout(
    *,
    organisation: Organisation,
    actor: Actor,
    plan: Plan,
    billing_cycle: str,
    currency: str,
    now: datetime,
    setup_intent_id: str = "",
) -> Checkout:
    """Checkout: save the card Stripe.js just confirmed (`setup_intent_id`), or use the card on
    file; charge what an earlier term still owes, then issue the first invoice and charge it.

    ServiceError (or gateway.PaymentError) when the card cannot be saved or there is none;
    otherwise `outcome` says whether the charge paid, was declined, waits for the customer's
    bank (Confirm payment) or is still unanswered.
    """
    if setup_intent_id:
        card_setup_complete(
            organisation=organisation, actor=actor, setup_intent_id=setup_intent_id, now=now
        )
    elif payment_method_current(organisation=organisation) is None:
        raise ServiceError("Enter your card details.")
    # What an earlier term left unpaid is charged first; the new term starts only once it is
    # paid (billing.arrears). A charge that did not go through is the checkout's outcome.
    for owed in arrears(organisation=organisation):
        payment = invoice_charge(invoice=owed, now=now, on_session=True)
        if charge_outcome(payment) != ChargeOutcome.PAID:
            return Checkout(invoice=owed, payment=payment)
    invoice = subscription_start(
        organisation=organisation,
        actor=actor,
        plan=plan,
        billing_cycle=billing_cycle,
        currency=currency,
        now=now,
    )
    if invoice.status == Invoice.Status.PAID:
        # The customer balance covered it in full (billing.balance): the subscription is
        # active already and nothing is charged.
        return Checkout(invoice=invoice, payment=None)
    # The customer is on the page: a bank that asks for 3-D Secure is answered there.
    payment = invoice_charge(invoice=invoice, now=now, on_session=True)
    return Checkout(invoice=invoice, payment=payment)
