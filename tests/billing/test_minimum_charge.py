"""Amounts under the processor's minimum charge (core.money.MINIMUM_CHARGE): an upgrade quoted
under it applies at once and its amount is carried to the next period invoice, exactly once."""

import re
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from accounts.audit import Actor
from billing.invoicing import billing_run_issue
from billing.ledger import check_upgrade_quotes, ledger_check
from billing.models import CarriedCharge, Invoice, InvoiceLine
from billing.tax import tax_for
from billing.upgrades import subscription_upgrade, upgrade_quote
from core.jobs import run_job
from subscriptions.cancellation import subscription_cancel
from subscriptions.models import CancellationReason, Plan, PlanChange, PlanPrice, Subscription
from tests.billing.helpers import START

pytestmark = pytest.mark.django_db

# The first period is 31 Jan - 28 Feb (28 days); Professional to Enterprise is $1,200.00 more a
# month, so ten minutes before the renewal it is 30 cents, plus tax: under the $0.50 minimum.
RENEWAL = START + timedelta(days=28)
LATE = RENEWAL - timedelta(minutes=10)
DESCRIPTION = (
    "Upgrade from Professional to Enterprise on 28 Feb 2026, prorated "
    "(carried: below the minimum charge)"
)


def enterprise():
    return Plan.objects.get(code="enterprise")


def carried_upgrade(org, *, at=LATE):
    subscription = Subscription.objects.get(organisation=org)
    quote = upgrade_quote(subscription=subscription, plan=enterprise(), now=at)
    invoice = subscription_upgrade(
        organisation=org,
        actor=Actor(user=None),
        plan=enterprise(),
        quoted_total=quote.total,
        now=at,
    )
    return quote, invoice


def intents(localstripe):
    return list(localstripe.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter())


def test_an_upgrade_under_the_minimum_applies_at_once_without_a_charge(
    subscribed, org, localstripe
):
    charged_before = len(intents(localstripe))

    quote, invoice = carried_upgrade(org)

    assert (quote.subtotal, quote.total, quote.minimum_charge, quote.carried) == (30, 37, 50, True)
    assert invoice is None
    assert not Invoice.objects.filter(kind=Invoice.Kind.UPGRADE).exists()
    assert len(intents(localstripe)) == charged_before
    subscription = Subscription.objects.get(organisation=org)
    assert (subscription.plan.code, subscription.current_price) == ("enterprise", 199900)
    change = PlanChange.objects.get(kind=PlanChange.Kind.UPGRADE)
    assert (change.status, change.effective_at, change.quote_subtotal) == ("applied", LATE, 30)
    [carried] = CarriedCharge.objects.all()
    assert (carried.plan_change, carried.amount, carried.currency, carried.line) == (
        change,
        30,
        "USD",
        None,
    )
    assert carried.description == DESCRIPTION


def test_an_upgrade_at_the_minimum_is_charged_as_usual(subscribed, org, localstripe):
    # 17 minutes before the renewal: 51 cents, plus tax.
    quote, invoice = carried_upgrade(org, at=RENEWAL - timedelta(minutes=17))

    assert quote.total >= 50
    assert not quote.carried
    assert invoice.kind == Invoice.Kind.UPGRADE
    assert not CarriedCharge.objects.exists()


def test_the_carried_amount_is_a_line_of_the_renewal_invoice_exactly_once(
    subscribed, org, localstripe
):
    carried_upgrade(org)

    assert billing_run_issue(now=RENEWAL + timedelta(minutes=1)) == 1
    assert billing_run_issue(now=RENEWAL + timedelta(minutes=2)) == 0

    renewal = Invoice.objects.get(kind=Invoice.Kind.SUBSCRIPTION, period_start=RENEWAL)
    plan_line, carried_line = renewal.lines.order_by("position")
    assert (plan_line.kind, plan_line.amount) == ("plan", 199900)
    assert (carried_line.kind, carried_line.amount, carried_line.description) == (
        "proration",
        30,
        DESCRIPTION,
    )
    # Taxed as the rest of the invoice, on the whole subtotal.
    assert renewal.subtotal == 199930
    decision = tax_for(details=renewal.billing_details)
    assert renewal.tax_amount == decision.amount(199930)
    assert renewal.total == renewal.subtotal + renewal.tax_amount
    assert CarriedCharge.objects.get().line == carried_line

    # The next renewal has no carried line: it was billed once.
    next_renewal = Subscription.objects.get(organisation=org).current_period_end
    assert billing_run_issue(now=next_renewal + timedelta(minutes=1)) == 1
    latest = Invoice.objects.filter(kind=Invoice.Kind.SUBSCRIPTION).latest("period_start")
    assert latest.period_start == next_renewal
    assert [line.kind for line in latest.lines.all()] == ["plan"]
    assert InvoiceLine.objects.filter(description=DESCRIPTION).count() == 1
    assert ledger_check(now=next_renewal + timedelta(hours=2), organisation_ids=[org.pk]) == []


def test_the_ledger_finds_a_carried_line_that_is_not_the_stored_quote(subscribed, org, localstripe):
    carried_upgrade(org)
    billing_run_issue(now=RENEWAL + timedelta(minutes=1))
    now = RENEWAL + timedelta(hours=2)
    assert list(check_upgrade_quotes(now=now, organisation_ids=[org.pk])) == []

    InvoiceLine.objects.filter(description=DESCRIPTION).update(amount=31, unit_amount=31)

    [violation] = check_upgrade_quotes(now=now, organisation_ids=[org.pk])
    assert violation.rule == "upgrade_quotes"
    assert violation.subject == f"plan_change:{PlanChange.objects.get().pk}"
    assert "carried $0.31" in violation.message
    assert "the quote was $0.30" in violation.message


def test_the_ledger_finds_an_upgrade_both_invoiced_and_carried(subscribed, org, localstripe):
    carried_upgrade(org)
    change = PlanChange.objects.get()
    renewal_invoice = Invoice.objects.get(kind=Invoice.Kind.SUBSCRIPTION)
    # A second billing of the same quote: an upgrade invoice for the carried change.
    Invoice.objects.filter(pk=renewal_invoice.pk).update(
        kind=Invoice.Kind.UPGRADE, plan_change=change
    )

    findings = [
        v
        for v in check_upgrade_quotes(now=RENEWAL, organisation_ids=[org.pk])
        if v.subject == f"plan_change:{change.pk}"
    ]

    assert [v.message for v in findings] == [
        "The upgrade is carried to the next invoice and also has its own upgrade invoice."
    ]


def test_the_ledger_reports_a_carried_amount_still_owed_after_the_subscription_ended(
    subscribed, org, localstripe
):
    carried_upgrade(org)
    Subscription.objects.filter(organisation=org).update(
        status=Subscription.Status.ENDED, cancel_at_period_end=True
    )

    [violation] = check_upgrade_quotes(now=RENEWAL + timedelta(hours=2), organisation_ids=[org.pk])

    assert violation.message == (
        "$0.30 carried to the next invoice, but the subscription has ended: still owed."
    )


def test_the_upgrade_pages_say_the_amount_is_carried(
    client_for, subscribed, org, admin, time_machine, localstripe
):
    time_machine.move_to(LATE)
    client = client_for(admin)
    sentence = (
        "$0.37 is below the minimum card charge ($0.50): the upgrade applies now and $0.37 is "
        "added to your next invoice on 28 Feb 2026."
    )

    page = client.get(reverse("billing:upgrade", args=[org.slug])).content.decode()
    assert sentence in page
    confirm = client.get(
        reverse("billing:upgrade_confirm", args=[org.slug]) + "?plan=enterprise"
    ).content.decode()
    assert sentence in confirm
    assert "Upgrade now</button>" in confirm
    assert "Pay $0.37" not in confirm

    charged_before = len(intents(localstripe))
    shown = re.search(r'name="quoted_total" value="(\d+)"', confirm).group(1)
    response = client.post(
        reverse("billing:upgrade_confirm", args=[org.slug]),
        {"plan": "enterprise", "quoted_total": shown},
        follow=True,
    )
    assert response.redirect_chain[-1][1] == 302
    assert "You are now on the Enterprise plan." in response.content.decode()
    assert len(intents(localstripe)) == charged_before
    assert CarriedCharge.objects.get().amount == 30


# Every other card invoice is at least one plan price or one overage unit (plus tax, never
# negative); prices under the minimum charge are refused, so none can fall under it.


@pytest.mark.parametrize(
    ("field", "amount"), [("monthly_amount", 49), ("annual_amount", 1), ("overage_per_1000", 20)]
)
def test_a_plan_price_under_the_minimum_charge_is_refused(field, amount):
    price = PlanPrice(
        plan=enterprise(),
        currency="USD",
        **{"monthly_amount": 1000, "annual_amount": 10000, "overage_per_1000": 200, field: amount},
    )

    with pytest.raises(ValidationError) as refused:
        price.clean()

    assert refused.value.message_dict == {field: ["Under the minimum card charge in USD ($0.50)."]}


def test_plan_prices_at_the_minimum_charge_and_no_overage_are_accepted():
    PlanPrice(
        plan=enterprise(), currency="GBP", monthly_amount=30, annual_amount=30, overage_per_1000=0
    ).clean()


def test_a_plan_price_in_a_currency_without_a_known_minimum_is_refused():
    with pytest.raises(ValidationError) as refused:
        PlanPrice(
            plan=enterprise(),
            currency="XYZ",
            monthly_amount=1000,
            annual_amount=10000,
            overage_per_1000=200,
        ).clean()

    assert refused.value.message_dict == {"currency": ["No minimum charge is known for 'XYZ'."]}


def test_every_seeded_price_is_at_least_the_minimum_charge():
    for price in PlanPrice.objects.all():
        price.clean()


def test_a_carried_amount_is_waived_when_the_subscription_ends_before_its_renewal(
    subscribed, org, localstripe
):
    # Upgraded minutes before the renewal, then cancelled: there is no next invoice to carry
    # the amount to, and cancelling stops every further invoice.
    carried_upgrade(org)
    subscription_cancel(
        subscription=Subscription.objects.get(organisation=org),
        actor=Actor(user=None),
        reason=CancellationReason.TOO_EXPENSIVE,
        detail="",
        now=LATE + timedelta(minutes=1),
    )
    after = RENEWAL + timedelta(minutes=15)
    for _ in range(2):  # tick twice: the same outcome
        for name in ("end_cancelled_subscriptions", "billing_run", "overage_invoices"):
            run_job(name, now=after)

    charge = CarriedCharge.objects.get()
    assert Subscription.objects.get(organisation=org).status == "ended"
    assert (charge.line_id, charge.waived_at) == (None, after)
    assert not Invoice.objects.filter(lines__description=DESCRIPTION).exists()
    assert list(check_upgrade_quotes(now=after, organisation_ids=[org.pk])) == []
