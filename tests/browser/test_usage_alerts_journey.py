"""Usage alerts in a real browser: an Admin goes from Settings > Subscription to Usage alerts,
adds a threshold with the keyboard, meets a refusal, switches the forecast alert on and removes
the threshold; the page fits a phone."""

import os

import pytest
from playwright.sync_api import expect

from subscriptions.models import Plan
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.browser.helpers import assert_fits_screen
from tests.subscriptions.factories import SubscriptionFactory
from usage.models import AlertSettings, AlertThreshold

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

SHOTS = os.environ.get("USAGE_ALERTS_SCREENSHOTS")  # a folder, to look at the pages


def shot(page, name):
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/{name}.png", full_page=True)


def sign_in(page, portal, email):
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


def test_an_admin_manages_the_usage_alerts(new_page, portal):
    from django.utils import timezone

    org = OrganisationFactory(name="Alerted Co", slug="alerted-co")
    admin = UserFactory(email="boss@alerted.test")
    MembershipFactory(organisation=org, user=admin, role="admin")
    SubscriptionFactory(
        organisation=org,
        plan=Plan.objects.get(code="standard"),
        anchor_at=timezone.now() - timezone.timedelta(days=10),
    )

    page = new_page()
    sign_in(page, portal, "boss@alerted.test")
    page.goto(f"{portal}/o/alerted-co/settings/subscription/")
    usage = page.get_by_role("region", name="Usage")
    expect(usage).to_contain_text("get one email at 80% and 100% of the limit")
    expect(usage).to_contain_text("Forecast alert: off.")
    usage.get_by_role("link", name="Manage usage alerts").click()

    expect(page.get_by_role("heading", name="Usage alerts", level=1)).to_be_visible()
    field = page.get_by_label("Alert at (% of the monthly limit)")
    field.fill("150")
    field.press("Enter")
    expect(page.get_by_text("Usage alert at 150% added.")).to_be_visible()
    expect(page.get_by_role("table")).to_contain_text("150%")
    expect(page.get_by_role("table")).to_contain_text("75,000")

    page.get_by_label("Alert at (% of the monthly limit)").fill("100")
    page.get_by_role("button", name="Add alert").click()
    expect(
        page.get_by_text("The 100% alert is always on: choose another percentage.")
    ).to_be_visible()
    shot(page, "alerts-error-1280")

    page.get_by_role("button", name="Switch on the forecast alert").click()
    expect(page.get_by_text("The forecast alert is on.")).to_be_visible()
    assert AlertSettings.objects.get(organisation=org).forecast is True
    shot(page, "alerts-1280")

    phone = new_page(width=375, height=800)
    sign_in(phone, portal, "boss@alerted.test")
    phone.goto(f"{portal}/o/alerted-co/settings/subscription/usage-alerts/")
    expect(phone.get_by_role("button", name="Remove the 150% alert")).to_be_visible()
    assert_fits_screen(phone)
    shot(phone, "alerts-375")
    phone.goto(f"{portal}/o/alerted-co/settings/subscription/")
    expect(phone.get_by_role("region", name="Usage")).to_contain_text(
        "80%, 100% and 150% of the limit"
    )
    shot(phone, "subscription-375")

    page.get_by_role("button", name="Remove the 150% alert").click()
    expect(page.get_by_text("Usage alert at 150% removed.")).to_be_visible()
    assert not AlertThreshold.objects.filter(organisation=org).exists()
