"""Found by the simulated year: cases the ledger and the upgrade must get right."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from accounts.audit import Actor
from billing.invoicing import subscription_start
from billing.ledger import ledger_check
from billing.models import Invoice
from billing.payments import invoice_charge
from billing.upgrades import upgrade_quote
from core.errors import ServiceError
from subscriptions.cancellation import subscription_cancel
from subscriptions.models import Plan, Subscription
from tests.billing.helpers import START

pytestmark = pytest.mark.django_db


def test_choosing_a_plan_again_after_the_end_is_a_new_term_not_a_gap(subscribed, org, admin):
    subscription = Subscription.objects.get(organisation=org)
    subscription_cancel(
        subscription=subscription,
        actor=Actor(user=admin),
        reason="not_using",
        detail="",
        now=START + timedelta(days=3),
    )
    end = subscription.current_period_end
    call_command("tick", "--now", (end + timedelta(minutes=15)).isoformat(), stdout=StringIO())
    assert Subscription.objects.get(organisation=org).status == "ended"
    again = end + timedelta(days=5)
    invoice = subscription_start(
        organisation=org,
        actor=Actor(user=admin),
        plan=Plan.objects.get(code="professional"),
        billing_cycle="monthly",
        currency="USD",
        now=again,
    )
    invoice_charge(invoice=invoice, now=again)
    assert Invoice.objects.get(pk=invoice.pk).starts_term
    assert ledger_check(now=again + timedelta(hours=2)) == []
    # A real gap inside a term is still found.
    Invoice.objects.filter(pk=invoice.pk).update(starts_term=False)
    assert [v.rule for v in ledger_check(now=again + timedelta(hours=2))] == ["periods"]


def test_no_upgrade_between_the_end_of_a_period_and_its_renewal(subscribed, org):
    subscription = Subscription.objects.get(organisation=org)
    at = subscription.current_period_end + timedelta(minutes=5)  # the billing run comes at +15
    with pytest.raises(ServiceError) as error:
        upgrade_quote(subscription=subscription, plan=Plan.objects.get(code="enterprise"), now=at)
    assert error.value.code == "renewal_pending"
    assert not Invoice.objects.filter(kind="upgrade").exists()


def test_no_free_upgrade_in_the_last_seconds_of_a_period(subscribed, org):
    subscription = Subscription.objects.get(organisation=org)
    at = subscription.current_period_end - timedelta(seconds=1)
    with pytest.raises(ServiceError) as error:
        upgrade_quote(subscription=subscription, plan=Plan.objects.get(code="enterprise"), now=at)
    assert error.value.code == "renewal_pending"


def test_a_subscription_ending_while_its_payment_fails_closes_its_dunning_case(
    subscribed, org, admin
):
    from billing.collection import dunning_advance
    from billing.models import DunningCase
    from devkit.stripe_standin import CHARGE_FAILS
    from tests.billing.helpers import add_card

    add_card(org, number=CHARGE_FAILS)
    renewal = Subscription.objects.get(organisation=org).current_period_end
    call_command("tick", "--now", renewal.isoformat(), stdout=StringIO())
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
    call_command("tick", "--now", (end + timedelta(minutes=15)).isoformat(), stdout=StringIO())
    assert Subscription.objects.get(organisation=org).status == "ended"
    case = DunningCase.objects.get()
    assert case.status == "closed"
    # Nothing suspends or charges an ended subscription afterwards.
    assert dunning_advance(now=end + timedelta(days=20)) == 0
    assert Subscription.objects.get(organisation=org).status == "ended"
    assert Invoice.objects.filter(status="open").exists()  # the debt stays, for ops
    assert [v for v in ledger_check(now=end + timedelta(days=1)) if v.rule == "status"] == []
