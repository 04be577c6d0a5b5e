"""Resubscribing after a term that ended in dunning: the old unpaid invoice stays owed, the
checkout shows it and charges it before the new term's first invoice, and the new
subscription starts only once it is paid (billing.arrears, billing.checkout)."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from accounts.audit import Actor
from billing.arrears import arrears
from billing.invoicing import subscription_start
from billing.ledger import ledger_check
from billing.models import Invoice
from billing.payments import ChargeOutcome
from billing.selectors import billing_profile_for
from billing.tax import tax_for
from core.errors import ServiceError
from core.money import format_money
from devkit.stripe_standin import CHARGE_FAILS, MASTERCARD
from subscriptions.cancellation import subscription_cancel
from subscriptions.models import Plan, Subscription
from tests.billing.helpers import add_card, subscribe

pytestmark = pytest.mark.django_db


def tick(at):
    call_command("tick", "--now", at.isoformat(), stdout=StringIO())


@pytest.fixture
def ended_in_dunning(subscribed, org, admin):
    """The renewal's charge fails, the Admin cancels while past due, the term ends: its
    renewal invoice is still open. Returns that invoice and the end."""
    add_card(org, number=CHARGE_FAILS)
    renewal = Subscription.objects.get(organisation=org).current_period_end
    tick(renewal)
    subscription = Subscription.objects.get(organisation=org)
    assert subscription.status == "past_due"
    subscription_cancel(
        subscription=subscription,
        actor=Actor(user=admin),
        reason="not_using",
        detail="",
        now=renewal + timedelta(days=1),
    )
    end = Subscription.objects.get(organisation=org).current_period_end
    tick(end + timedelta(minutes=15))
    assert Subscription.objects.get(organisation=org).status == "ended"
    [owed] = Invoice.objects.filter(organisation=org, status="open")
    return owed, end


def test_the_checkout_charges_the_old_invoice_before_the_new_term_starts(ended_in_dunning, org):
    owed, end = ended_in_dunning
    assert arrears(organisation=org) == [owed]
    again = end + timedelta(days=5)
    first = subscribe(org, plan="standard", now=again, number=MASTERCARD)
    owed.refresh_from_db()
    assert (owed.status, first.status) == ("paid", "paid")
    assert owed.payments.get(status="succeeded").pk < first.payments.get(status="succeeded").pk
    subscription = Subscription.objects.get(organisation=org)
    assert (subscription.status, subscription.plan.code) == ("active", "standard")
    assert arrears(organisation=org) == []
    # Nothing overdue on the new subscription: the ledger has nothing to say.
    assert ledger_check(now=again + timedelta(hours=2), organisation_ids=[org.pk]) == []


def test_a_declined_old_invoice_keeps_the_subscription_from_starting(ended_in_dunning, org):
    from billing.cards import stripe_customer_ensure
    from billing.checkout import subscription_checkout
    from devkit.stripe_standin import confirmed_setup_intent

    owed, end = ended_in_dunning
    again = end + timedelta(days=5)
    checkout = subscription_checkout(
        organisation=org,
        actor=Actor(user=None),
        plan=Plan.objects.get(code="standard"),
        billing_cycle="monthly",
        currency="USD",
        now=again,
        setup_intent_id=confirmed_setup_intent(
            customer_id=stripe_customer_ensure(organisation=org), number=CHARGE_FAILS
        ),
    )
    assert checkout.outcome == ChargeOutcome.DECLINED
    assert checkout.invoice == owed
    assert Subscription.objects.get(organisation=org).status == "ended"
    assert list(Invoice.objects.filter(organisation=org, status="open")) == [owed]
    # The service refuses to start a term while the old one is owed, whoever calls it.
    with pytest.raises(ServiceError) as error:
        subscription_start(
            organisation=org,
            actor=Actor(user=None),
            plan=Plan.objects.get(code="standard"),
            billing_cycle="monthly",
            currency="USD",
            now=again,
        )
    assert owed.number in error.value.message
    assert Subscription.objects.get(organisation=org).status == "ended"


def test_the_checkout_page_shows_what_is_still_owed(ended_in_dunning, org, admin, client_for):
    owed, _ = ended_in_dunning
    page = (
        client_for(admin)
        .get(
            reverse("billing:checkout", args=[org.slug]),
            {"plan": "standard", "billing_cycle": "monthly", "currency": "USD"},
        )
        .content.decode()
    )
    amount = format_money(owed.total, "USD")
    assert f"You still owe {owed.number} {amount} from your previous subscription" in page
    price = Plan.objects.get(code="standard").price_for("USD").monthly_amount
    first_total = price + tax_for(details=billing_profile_for(organisation=org).snapshot()).amount(
        price
    )
    assert f"<strong>{format_money(first_total + owed.total, 'USD')}</strong>" in page


def test_nothing_is_owed_for_a_new_organisation(org):
    assert arrears(organisation=org) == []
