"""Upgrade Plan (billing.upgrades): the quote shown is the amount charged, to the cent."""

import contextlib
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.db import connection
from django.urls import reverse

from accounts.audit import Actor
from billing.models import Invoice, Payment
from billing.payments import invoice_charge
from billing.upgrades import QuoteChanged, subscription_upgrade, upgrade_quote
from core.errors import ServiceError
from devkit.stripe_standin import CHARGE_FAILS
from subscriptions.models import Plan, PlanChange, Subscription
from tests.billing.helpers import START, add_card, subscribe

pytestmark = pytest.mark.django_db

ENTERPRISE = "enterprise"


def plan(code):
    return Plan.objects.get(code=code)


def upgrade(org, *, at, code=ENTERPRISE, total=None):
    subscription = Subscription.objects.get(organisation=org)
    if total is None:
        total = upgrade_quote(subscription=subscription, plan=plan(code), now=at).total
    invoice = subscription_upgrade(
        organisation=org, actor=Actor(user=None), plan=plan(code), quoted_total=total, now=at
    )
    return invoice, invoice_charge(invoice=invoice, now=at)


def test_monthly_upgrade_half_way_charges_the_exact_prorated_difference(
    subscribed, org, localstripe
):
    half_way = START + timedelta(days=14)  # the period is 28 days (31 Jan - 28 Feb)
    subscription = Subscription.objects.get(organisation=org)
    quote = upgrade_quote(subscription=subscription, plan=plan(ENTERPRISE), now=half_way)
    assert (quote.subtotal, quote.tax_amount, quote.total) == (60000, 13800, 73800)
    invoice, payment = upgrade(org, at=half_way, total=quote.total)
    assert (invoice.kind, invoice.total, invoice.status) == ("upgrade", 73800, "open")
    assert payment.status == "succeeded"
    assert payment.amount == quote.total
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    [line] = invoice.lines.all()
    assert (line.kind, line.amount) == ("proration", 60000)
    assert "Upgrade from Professional to Enterprise" in line.description
    subscription.refresh_from_db()
    assert (subscription.plan.code, subscription.current_price) == (ENTERPRISE, 199900)
    change = PlanChange.objects.get(kind="upgrade")
    assert (change.status, change.quote_total, change.invoice) == ("applied", 73800, invoice)
    charged = [pi for pi in localstripe.v1.payment_intents.list().data if pi["amount"] == 73800]
    assert len(charged) == 1


def test_annual_upgrade_charges_the_exact_prorated_difference(localstripe, org, admin):
    subscribe(org, plan="professional", cycle="annual")
    at = START + timedelta(days=73)  # 292 of 365 days left: 0.8 of the difference
    invoice, payment = upgrade(org, at=at)
    assert invoice.subtotal == (1991000 - 795800) * 8 // 10 == 956160
    assert invoice.tax_amount == 219917  # 23% of 956160 = 219916.8, rounded half up
    assert payment.amount == invoice.total == 1176077
    assert Subscription.objects.get(organisation=org).plan.code == ENTERPRISE


def test_renewal_after_an_upgrade_charges_the_new_price(subscribed, org):
    from billing.invoicing import billing_run_issue

    upgrade(org, at=START + timedelta(days=3))
    billing_run_issue(now=datetime(2026, 2, 28, 10, 0, tzinfo=UTC))
    renewal = Invoice.objects.filter(kind="subscription").order_by("-pk").first()
    assert (renewal.plan_name, renewal.subtotal) == ("Enterprise", 199900)


def test_declined_upgrade_leaves_the_old_plan_and_nothing_owed(subscribed, org, localstripe):
    add_card(org, number=CHARGE_FAILS)
    mail.outbox.clear()
    invoice, payment = upgrade(org, at=START + timedelta(days=2))
    assert (payment.status, payment.failure_message) == ("failed", "Your card was declined.")
    invoice.refresh_from_db()
    assert invoice.status == "void"
    assert Subscription.objects.get(organisation=org).plan.code == "professional"
    assert PlanChange.objects.get(kind="upgrade").status == "failed"
    assert not Invoice.objects.filter(status="open").exists()
    assert not [m for m in mail.outbox if "Payment failed" in m.subject]
    # Trying again issues a fresh quote and invoice, not a second charge of the old one.
    add_card(org)
    invoice2, payment2 = upgrade(org, at=START + timedelta(days=2))
    assert invoice2.pk != invoice.pk
    assert payment2.status == "succeeded"


def test_a_moved_quote_is_refused_and_nothing_is_created(subscribed, org):
    subscription = Subscription.objects.get(organisation=org)
    shown = upgrade_quote(subscription=subscription, plan=plan(ENTERPRISE), now=START).total
    later = START + timedelta(days=1)
    with pytest.raises(QuoteChanged) as changed:
        subscription_upgrade(
            organisation=org,
            actor=Actor(user=None),
            plan=plan(ENTERPRISE),
            quoted_total=shown,
            now=later,
        )
    assert changed.value.quote.total < shown
    assert not PlanChange.objects.exists()
    assert Invoice.objects.count() == 1


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("professional", "You are already on the Professional plan."),
        ("standard", "Standard is a lower plan: use Change Plan"),
    ],
)
def test_same_or_lower_plan_is_refused(subscribed, org, code, message):
    with pytest.raises(ServiceError, match=message):
        upgrade(org, at=START, code=code, total=0)
    assert not PlanChange.objects.exists()


def test_suspended_subscription_must_pay_first(subscribed, org):
    Subscription.objects.filter(organisation=org).update(status="suspended")
    with pytest.raises(ServiceError, match="Retry Payment"):
        upgrade(org, at=START, total=1)
    assert Invoice.objects.count() == 1


def test_an_upgrade_cancels_a_scheduled_downgrade(subscribed, org):
    subscription = Subscription.objects.get(organisation=org)
    PlanChange.objects.create(
        subscription=subscription,
        kind="downgrade",
        status="scheduled",
        from_plan=plan("professional"),
        to_plan=plan("standard"),
        billing_cycle="monthly",
        effective_at=subscription.current_period_end,
    )
    upgrade(org, at=START + timedelta(days=1))
    assert PlanChange.objects.get(kind="downgrade").status == "canceled"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_upgrade_clicks_at_once_give_one_charge(localstripe):
    from tests.accounts.factories import MembershipFactory, OrganisationFactory

    org = OrganisationFactory()
    MembershipFactory(organisation=org, role="admin")
    subscribe(org)
    at = START + timedelta(days=5)
    total = upgrade_quote(
        subscription=Subscription.objects.get(organisation=org), plan=plan(ENTERPRISE), now=at
    ).total
    barrier = threading.Barrier(2)
    invoices = []

    def click():
        try:
            barrier.wait()
            invoice = subscription_upgrade(
                organisation=org,
                actor=Actor(user=None),
                plan=plan(ENTERPRISE),
                quoted_total=total,
                now=at,
            )
            invoices.append(invoice.pk)
            with contextlib.suppress(ServiceError):  # already paid by the other click
                invoice_charge(invoice=invoice, now=at)
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(invoices)) == 1
    assert Invoice.objects.filter(kind="upgrade").count() == 1
    upgrade_intents = [
        pi for pi in localstripe.v1.payment_intents.list().data if pi["amount"] == total
    ]
    assert len(upgrade_intents) == 1
    assert Payment.objects.filter(invoice_id=invoices[0], status="succeeded").count() == 1


def test_upgrade_pages_show_the_quote_that_is_charged(
    client_for, subscribed, org, admin, time_machine
):
    time_machine.move_to(START + timedelta(days=14))
    client = client_for(admin)
    page = client.get(reverse("billing:upgrade", args=[org.slug])).content.decode()
    assert "Enterprise" in page
    assert "$738.00" in page
    confirm = client.get(reverse("billing:upgrade_confirm", args=[org.slug]) + "?plan=enterprise")
    body = confirm.content.decode()
    assert "takes effect" in body.lower() or "Takes effect" in body
    assert "Visa ending 4242" in body
    shown = re.search(r'name="quoted_total" value="(\d+)"', body).group(1)
    response = client.post(
        reverse("billing:upgrade_confirm", args=[org.slug]),
        {"plan": "enterprise", "quoted_total": shown},
    )
    assert response.status_code == 302
    invoice = Invoice.objects.get(kind="upgrade")
    assert invoice.total == int(shown) == 73800


def test_a_stale_quote_on_the_page_shows_the_new_amount(
    client_for, subscribed, org, admin, time_machine
):
    time_machine.move_to(START + timedelta(days=14))
    response = client_for(admin).post(
        reverse("billing:upgrade_confirm", args=[org.slug]),
        {"plan": "enterprise", "quoted_total": "99999"},
    )
    assert response.status_code == 409
    assert "The amount changed since the quote was shown" in response.content.decode()
    assert 'name="quoted_total" value="73800"' in response.content.decode()
    assert not Invoice.objects.filter(kind="upgrade").exists()


def test_unknown_plan_on_the_upgrade_page(client_for, subscribed, org, admin):
    response = client_for(admin).get(
        reverse("billing:upgrade_confirm", args=[org.slug]) + "?plan=platinum", follow=True
    )
    assert "That plan does not exist or is no longer offered." in response.content.decode()


def test_billing_contact_cannot_upgrade(client_for, subscribed, org, billing_user):
    assert (
        client_for(billing_user).get(reverse("billing:upgrade", args=[org.slug])).status_code == 403
    )
