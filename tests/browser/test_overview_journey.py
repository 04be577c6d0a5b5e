"""The Overview in a real browser, for each role, on a desktop and on a phone: an account with
several things needing attention shows each with its link, nothing overflows the screen at
375 px, and the links are reachable from the keyboard.

Set OVERVIEW_SHOTS to a folder to keep a screenshot of every page looked at.
"""

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from billing.dunning import Step
from billing.models import DunningCase, DunningStep, Invoice, PaymentMethod
from sso.models import SsoConfiguration
from subscriptions.models import Subscription
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.factories import issued_invoice
from tests.browser.helpers import assert_fits_screen
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
    plan,
)
from usage.models import UsageCounter
from usage.months import usage_month_of

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

SHOTS = os.environ.get("OVERVIEW_SHOTS")


def troubled_organisation(now):
    """A past-due Enterprise account: a failed payment, a card about to expire, a cancellation
    pending, an SSO certificate expiring, usage on track to go over, three invoices."""
    org = OrganisationFactory(name="Northwind Logistics", slug="northwind")
    subscription = SubscriptionFactory(
        organisation=org,
        plan=plan("enterprise"),
        anchor_at=now - timedelta(days=12),
        status=Subscription.Status.PAST_DUE,
        cancel_at_period_end=True,
        canceled_at=now - timedelta(days=1),
    )
    month_start, _ = usage_month_of(subscription, now)
    for offset in range(1, 8):
        day = (now - timedelta(days=offset)).date()
        if day >= month_start.date():
            UsageCounter.objects.create(
                organisation=org, month_start=month_start, day=day, transactions=120_000
            )
    environment = EnvironmentFactory(organisation=org, name="Production")
    for name in ("Orders to ERP", "Stock levels", "Invoices to CRM"):
        ProcessFlowFactory(organisation=org, environment=environment, name=name)
    for months in (2, 1):
        issued_invoice(
            organisation=org,
            status=Invoice.Status.PAID,
            currency="USD",
            issued_at=now - timedelta(days=30 * months + 12),
        )
    started = now - timedelta(days=1)
    issued_invoice(organisation=org, subscription=subscription, currency="USD", issued_at=started)
    case = DunningCase.objects.create(
        organisation=org, subscription=subscription, started_at=started
    )
    DunningStep.objects.create(case=case, step=Step.DAY_0, ran_at=started)
    expires = now + timedelta(days=12)
    PaymentMethod.objects.create(
        organisation=org,
        stripe_payment_method_id="pm_overview_journey",
        brand="visa",
        last4="4242",
        exp_month=(expires - timedelta(days=1)).month,
        exp_year=(expires - timedelta(days=1)).year,
        expires_at=expires,
    )
    SsoConfiguration.objects.create(
        organisation=org,
        idp_certificates=[
            {
                "subject": "CN=login.northwind.test",
                "fingerprint": "aa:bb",
                "not_after": (now + timedelta(days=9)).isoformat(),
            }
        ],
    )
    return org


def sign_in(page, portal, email):
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


def look(page, name):
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


ROLES = {
    "admin": ("ceo@northwind.test", ["payment_failed", "card_expiring", "cancellation", "sso"]),
    "billing": ("ap@northwind.test", ["payment_failed", "card_expiring", "cancellation"]),
    "member": ("ops@northwind.test", ["payment_failed", "cancellation"]),
}


@pytest.mark.parametrize("role", list(ROLES))
def test_each_role_sees_what_needs_attention_on_desktop_and_phone(new_page, portal, role):
    now = timezone.now()
    org = troubled_organisation(now)
    email, expected = ROLES[role]
    MembershipFactory(organisation=org, user=UserFactory(email=email), role=role)

    for width in (1280, 375):
        page = new_page(width=width)
        sign_in(page, portal, email)
        page.goto(f"{portal}/o/northwind/")
        attention = page.get_by_role("region", name="Needs your attention")
        items = attention.locator("li.overview-action")
        expect(items).to_have_count(len(expected))
        keys = [items.nth(n).get_attribute("data-action") for n in range(len(expected))]
        assert [key.split("_certificate")[0] for key in keys] == expected
        expect(page.get_by_role("region", name="Current plan")).to_contain_text("Enterprise")
        expect(page.get_by_role("region", name="Usage this month")).to_contain_text(
            "On track to go over"
        )
        body = page.locator("main").inner_text()
        if role == "member":
            assert "$" not in body
            expect(page.get_by_role("region", name="Recent invoices")).to_have_count(0)
        else:
            expect(
                page.get_by_role("region", name="Recent invoices").locator("tbody tr")
            ).to_have_count(3)
        assert_fits_screen(page)
        look(page, f"overview-{role}-{width}")

    # From the keyboard: the first item's link is reachable and opens where it is fixed.
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Enter")
    for _ in range(40):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.closest('.overview-attention') !== null")
        if focused:
            break
    if role == "member":
        assert page.evaluate("document.activeElement.textContent") == "Export Sync Info"
    else:
        assert page.evaluate("document.activeElement.textContent") == (
            "Update card or retry payment"
        )


def test_an_account_in_good_standing_says_nothing_needs_attention(new_page, portal):
    now = timezone.now()
    org = OrganisationFactory(name="Calm Co", slug="calm-co")
    SubscriptionFactory(organisation=org, anchor_at=now - timedelta(days=3))
    MembershipFactory(organisation=org, user=UserFactory(email="boss@calm.test"), role="admin")
    for width in (1280, 375):
        page = new_page(width=width)
        sign_in(page, portal, "boss@calm.test")
        page.goto(f"{portal}/o/calm-co/")
        expect(page.get_by_role("region", name="Needs your attention")).to_contain_text(
            "Nothing needs your attention."
        )
        assert_fits_screen(page)
        look(page, f"overview-calm-{width}")
