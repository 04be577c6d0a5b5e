"""Plain helpers for billing tests: a card on file, a subscription started as the article
describes (fixtures stay in tests/billing/conftest.py)."""

from datetime import UTC, datetime

from accounts.audit import Actor
from billing.cards import card_setup_complete, stripe_customer_ensure
from billing.checkout import subscription_checkout
from billing.models import Invoice
from devkit.stripe_standin import VISA, confirmed_setup_intent
from subscriptions.models import Plan

START = datetime(2026, 1, 31, 10, 0, tzinfo=UTC)


def add_card(organisation, *, number=VISA, now=START, user=None):
    customer_id = stripe_customer_ensure(organisation=organisation)
    setup_intent_id = confirmed_setup_intent(customer_id=customer_id, number=number)
    return card_setup_complete(
        organisation=organisation,
        actor=Actor(user=user),
        setup_intent_id=setup_intent_id,
        now=now,
    )


def subscribe(
    organisation, *, plan="professional", cycle="monthly", currency="USD", now=START, number=VISA
) -> Invoice:
    """The checkout path: pick a plan and cycle, enter a card, first invoice issued and charged."""
    customer_id = stripe_customer_ensure(organisation=organisation)
    checkout = subscription_checkout(
        organisation=organisation,
        actor=Actor(user=None),
        plan=Plan.objects.get(code=plan),
        billing_cycle=cycle,
        currency=currency,
        now=now,
        setup_intent_id=confirmed_setup_intent(customer_id=customer_id, number=number),
    )
    invoice = checkout.invoice
    invoice.refresh_from_db()
    return invoice
