"""Billing recipients in a real browser: an Admin adds the accounts-payable mailbox, its holder
confirms from the email on a phone without an account, a mistyped address is refused, and
removing it takes it off the list."""

import os
from pathlib import Path

import pytest
from django.core import mail
from playwright.sync_api import expect

from accounts.models import BillingRecipient
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.browser.helpers import link_in_mail

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

# Set to a folder to keep screenshots of each step (for looking at the pages).
SHOTS = os.environ.get("BROWSER_SHOTS")


def shot(page, name):
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def sign_in(page, portal, email):
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


@pytest.mark.parametrize("width", [1280, 375])
def test_admin_adds_the_ap_mailbox_which_confirms_from_the_email(new_page, portal, width):
    org = OrganisationFactory(name="Payables Co", slug="payables-co")
    MembershipFactory(organisation=org, user=UserFactory(email="boss@payables.test"), role="admin")

    page = new_page(width=width)
    sign_in(page, portal, "boss@payables.test")
    page.goto(f"{portal}/o/payables-co/settings/billing/invoices/")
    # Keyboard users reach the tab like any link.
    tab = page.get_by_role("link", name="Billing recipients", exact=True)
    tab.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_text("No billing recipients yet.")).to_be_visible()
    shot(page, f"{width}-1-empty")

    page.get_by_label("Email address").fill("ap@payables")
    page.get_by_role("button", name="Send confirmation link").click()
    expect(page.get_by_text("Enter a valid email address, such as ap@example.com.")).to_be_visible()
    shot(page, f"{width}-2-error")
    assert not BillingRecipient.objects.exists()

    page.get_by_label("Email address").fill("ap@payables.test")
    page.get_by_role("button", name="Send confirmation link").click()
    expect(page.get_by_text("We emailed a confirmation link to ap@payables.test.")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="ap@payables.test")
    expect(row).to_contain_text("Pending confirmation")
    expect(
        row.get_by_role("button", name="Resend confirmation to ap@payables.test")
    ).to_be_visible()
    shot(page, f"{width}-3-pending")

    # The mailbox holder has no account: the link works without signing in.
    mailbox = new_page(width=width)
    link = link_in_mail(mail.outbox[-1], "/billing-recipients/confirm/")
    mailbox.goto(link)
    expect(mailbox.get_by_role("heading", name="Confirm billing emails")).to_be_visible()
    shot(mailbox, f"{width}-4-link")
    mailbox.get_by_role("button", name="Confirm ap@payables.test").click()
    expect(
        mailbox.get_by_text("ap@payables.test now receives the billing emails of Payables Co.")
    ).to_be_visible()
    shot(mailbox, f"{width}-5-confirmed")
    mailbox.goto(link)
    expect(mailbox.get_by_role("heading", name="Already confirmed")).to_be_visible()
    expect(mailbox.get_by_text("This link has already been used")).to_be_visible()
    shot(mailbox, f"{width}-6-used")

    # Notifications list the confirmation email with the address labelled.
    page.goto(f"{portal}/o/payables-co/notifications/")
    entry = page.locator(".notification").filter(has_text="Confirm ap@payables.test")
    expect(entry).to_contain_text("To ap@payables.test (billing recipient)")
    shot(page, f"{width}-8-notifications")
    page.goto(f"{portal}/o/payables-co/settings/billing/recipients/")

    row = page.get_by_role("row").filter(has_text="ap@payables.test")
    expect(row).to_contain_text("Confirmed")
    expect(row.get_by_role("button", name="Resend confirmation to ap@payables.test")).to_have_count(
        0
    )
    shot(page, f"{width}-7-confirmed-list")
    row.get_by_role("button", name="Remove ap@payables.test").click()
    expect(
        page.get_by_text("ap@payables.test was removed. It receives no more billing emails.")
    ).to_be_visible()
    expect(page.get_by_text("No billing recipients yet.")).to_be_visible()
    assert BillingRecipient.objects.get().removed_at is not None
