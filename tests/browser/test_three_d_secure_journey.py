"""3-D Secure in a real browser: the bank's challenge (the Stripe.js mock's dialog) on Upgrade
Plan, completed and failed, and a renewal the customer confirms from the email's link."""

import io
from datetime import timedelta
from io import StringIO
from urllib.parse import urlsplit

import pytest
from django.core import mail
from django.core.management import call_command
from django.utils import timezone
from playwright.sync_api import expect
from pypdf import PdfReader

from billing.models import Invoice
from devkit.stripe_standin import AUTH_ALWAYS
from subscriptions.models import ProcessFlow, Subscription
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.helpers import add_card, subscribe
from tests.browser.helpers import link_in_mail
from tests.subscriptions.factories import EnvironmentFactory, ProcessFlowFactory

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def sign_in(page, portal, email):
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


@pytest.fixture
def card_that_asks(localstripe, time_machine):
    # The quote is prorated to the second: the test and the live server share a still clock.
    time_machine.move_to(timezone.now(), tick=False)
    org = OrganisationFactory(name="Secure Co", slug="secure-co")
    MembershipFactory(organisation=org, user=UserFactory(email="boss@secure.test"), role="admin")
    subscribe(org, now=timezone.now() - timedelta(days=10))
    add_card(org, number=AUTH_ALWAYS)
    return org


def start_upgrade(page, portal):
    sign_in(page, portal, "boss@secure.test")
    page.goto(f"{portal}/o/secure-co/settings/subscription/upgrade/confirm/?plan=enterprise")
    quoted = page.locator("[data-quote-total]").inner_text()
    page.get_by_role("button", name=f"Pay {quoted} and upgrade").click()
    expect(page.get_by_role("heading", name="Confirm payment")).to_be_visible()
    # The bank's dialog opens by itself.
    expect(page.get_by_role("button", name="Complete authentication")).to_be_visible()
    return quoted


def test_upgrade_with_a_card_that_asks_completes_the_challenge(new_page, portal, card_that_asks):
    page = new_page()
    quoted = start_upgrade(page, portal)

    page.get_by_role("button", name="Complete authentication").click()

    expect(page.get_by_text("You are now on the Enterprise plan.")).to_be_visible()
    assert Subscription.objects.get(organisation=card_that_asks).plan.code == "enterprise"
    invoice = Invoice.objects.get(kind="upgrade")
    assert invoice.status == "paid"
    page.goto(f"{portal}/o/secure-co/settings/billing/invoices/")
    with page.expect_download() as download_info:
        page.get_by_role("link", name=invoice.number).click()
    with open(download_info.value.path(), "rb") as pdf:
        text = PdfReader(io.BytesIO(pdf.read())).pages[0].extract_text()
    assert invoice.number in text
    assert quoted in text


def test_upgrade_with_a_failed_challenge_keeps_the_plan(new_page, portal, card_that_asks):
    page = new_page()
    start_upgrade(page, portal)

    page.get_by_role("button", name="Fail authentication").click()

    expect(page.get_by_text("Your bank did not confirm the payment")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel this upgrade")).to_be_visible()
    assert Subscription.objects.get(organisation=card_that_asks).plan.code == "professional"
    assert Invoice.objects.get(kind="upgrade").status == "open"

    # Trying again confirms the same payment; this time the challenge is completed.
    page.get_by_role("button", name="Confirm payment of").click()
    page.get_by_role("button", name="Complete authentication").click()
    expect(page.get_by_text("You are now on the Enterprise plan.")).to_be_visible()


def test_renewal_confirmed_from_the_email_link_resumes_the_flows(new_page, portal, localstripe):
    start = timezone.now() - timedelta(days=45)
    org = OrganisationFactory(name="Renew Co", slug="renew-co")
    MembershipFactory(organisation=org, user=UserFactory(email="boss@renew.test"), role="admin")
    subscribe(org, now=start)
    environment = EnvironmentFactory(organisation=org)
    ProcessFlowFactory.create_batch(2, organisation=org, environment=environment)
    add_card(org, number=AUTH_ALWAYS, now=start)
    renewal = Subscription.objects.get(organisation=org).current_period_end
    mail.outbox.clear()
    for day in (0, 3, 7, 14):
        call_command(
            "tick", "--now", (renewal + timedelta(days=day)).isoformat(), stdout=StringIO()
        )
    assert Subscription.objects.get(organisation=org).status == "suspended"
    [message, *_] = [m for m in mail.outbox if "Your bank needs you to confirm" in m.subject]
    link = urlsplit(link_in_mail(message, "/o/renew-co/settings/billing/invoices/"))

    page = new_page()
    sign_in(page, portal, "boss@renew.test")
    page.goto(f"{portal}{link.path}")
    expect(page.get_by_role("heading", name="Confirm payment")).to_be_visible()
    expect(page.locator("[data-confirm-amount]")).to_have_text("$982.77")
    page.get_by_role("button", name="Confirm payment of $982.77").click()
    page.get_by_role("button", name="Complete authentication").click()

    expect(page.get_by_text("Your service is running normally.")).to_be_visible()
    assert Subscription.objects.get(organisation=org).status == "active"
    assert set(ProcessFlow.objects.values_list("status", flat=True)) == {"active"}


def fill_card(page, number, *, button="Save card"):
    card = page.locator("#card-element")
    card.get_by_placeholder("number").fill(number)
    card.get_by_placeholder("exp_month").fill("12")
    card.get_by_placeholder("exp_year").fill("30")
    card.get_by_placeholder("cvc").fill("123")
    card.get_by_placeholder("postal_code").fill("10001")
    page.get_by_role("button", name=button).click()


def test_update_card_answers_the_setup_challenge(new_page, portal, localstripe):
    org = OrganisationFactory(name="Card Co", slug="card-co")
    MembershipFactory(organisation=org, user=UserFactory(email="boss@card.test"), role="admin")
    subscribe(org, now=timezone.now() - timedelta(days=3))
    page = new_page()
    sign_in(page, portal, "boss@card.test")
    page.goto(f"{portal}/o/card-co/settings/billing/payment-method/")

    fill_card(page, "4000002500003155")
    page.get_by_role("button", name="Fail authentication").click()
    expect(page.get_by_text("authentication failed")).to_be_visible()
    expect(page.get_by_text("Visa ending 4242")).to_be_visible()

    fill_card(page, "4000002500003155")
    page.get_by_role("button", name="Complete authentication").click()
    expect(page.get_by_text("Visa •••• 3155 saved.")).to_be_visible()
    expect(page.get_by_text("Visa ending 3155")).to_be_visible()


def test_checkout_with_a_card_that_asks_twice(new_page, portal, localstripe):
    # The help article's first steps with 4000002760003184: the bank asks when the card is
    # saved, and again for the first payment; the subscription starts once it is paid.
    org = OrganisationFactory(name="New Co", slug="new-co")
    MembershipFactory(organisation=org, user=UserFactory(email="boss@new.test"), role="admin")
    page = new_page()
    sign_in(page, portal, "boss@new.test")
    page.goto(
        f"{portal}/o/new-co/settings/subscription/checkout/"
        "?plan=standard&billing_cycle=monthly&currency=USD"
    )
    fill_card(page, AUTH_ALWAYS, button="and subscribe")
    page.get_by_role("button", name="Complete authentication").click()  # saving the card

    expect(page.get_by_role("heading", name="Confirm payment")).to_be_visible()
    page.get_by_role("button", name="Complete authentication").click()  # the payment

    expect(page.get_by_text("Welcome to the Standard plan.")).to_be_visible()
    assert Subscription.objects.get(organisation=org).status == "active"
