"""Article section 6 in a real browser: a suspended organisation's Admin sees why, updates the
card in the Stripe.js form, and the account and its ProcessFlows run again."""

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from playwright.sync_api import expect

from devkit.stripe_standin import CHARGE_FAILS
from subscriptions.models import ProcessFlow, Subscription
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.helpers import add_card, subscribe
from tests.subscriptions.factories import EnvironmentFactory, ProcessFlowFactory

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def tick(at):
    call_command("tick", "--now", at.isoformat(), stdout=StringIO())


@pytest.fixture
def suspended(localstripe):
    """Professional monthly; the renewal's charge failed 15+ days ago and every retry since:
    suspended, both ProcessFlows paused for the suspension."""
    start = timezone.now() - timedelta(days=47)
    org = OrganisationFactory(name="Lapsed Co", slug="lapsed-co")
    MembershipFactory(organisation=org, user=UserFactory(email="boss@lapsed.test"), role="admin")
    subscribe(org, now=start)
    environment = EnvironmentFactory(organisation=org)
    ProcessFlowFactory.create_batch(2, organisation=org, environment=environment)
    add_card(org, number=CHARGE_FAILS, now=start)
    renewal = Subscription.objects.get(organisation=org).current_period_end
    for day in (0, 3, 7, 14):
        tick(renewal + timedelta(days=day))
    assert Subscription.objects.get(organisation=org).status == "suspended"
    assert set(ProcessFlow.objects.values_list("status", "pause_reason")) == {
        ("paused", "suspension")
    }
    return org


def test_suspended_admin_updates_the_card_and_the_flows_resume(new_page, portal, suspended):
    page = new_page()
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill("boss@lapsed.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.goto(f"{portal}/o/lapsed-co/")

    banner = page.locator("[data-account-banner]")
    expect(banner).to_contain_text(
        "Account suspended: ProcessFlows are paused until $982.77 is paid."
    )
    banner.get_by_role("link", name="Update card or retry payment").click()

    timeline = page.get_by_role("region", name="Failed payment")
    expect(timeline).to_contain_text("Suspended since")
    expect(timeline).to_contain_text("Amount due $982.77")
    expect(timeline.locator("[data-step=day_0]")).to_contain_text(
        "Charge failed: Your card was declined."
    )
    expect(timeline.locator("[data-step=day_14]")).to_contain_text(
        "Account suspended; active ProcessFlows paused."
    )
    expect(timeline.get_by_role("button", name="Retry Payment")).to_be_visible()
    expect(
        page.get_by_text("Saving a new card retries the open invoices with it right away.")
    ).to_be_visible()

    card = page.locator("#card-element")
    card.get_by_placeholder("number").fill("4242424242424242")
    card.get_by_placeholder("exp_month").fill("12")
    card.get_by_placeholder("exp_year").fill("30")
    card.get_by_placeholder("cvc").fill("123")
    card.get_by_placeholder("postal_code").fill("10001")
    page.get_by_role("button", name="Save card").click()

    expect(
        page.get_by_text(
            re.compile(
                r"Visa •••• 4242 saved and the open invoices were paid with it: \$982\.77 paid\."
            )
        )
    ).to_be_visible()
    expect(page.locator("[data-account-banner]")).to_have_count(0)
    expect(page.get_by_role("region", name="Failed payment")).to_have_count(0)
    assert Subscription.objects.get(organisation=suspended).status == "active"
    assert list(ProcessFlow.objects.values_list("status", "pause_reason")) == [
        ("active", ""),
        ("active", ""),
    ]
