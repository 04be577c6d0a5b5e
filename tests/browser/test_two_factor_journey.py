"""Two-factor sign-in in a real browser: an Admin sets up an authenticator app (the code computed
from the secret the page shows), requires two-factor sign-in of Admins and Billing contacts, and
a Billing contact without a second factor, opening Invoice History, is sent to set one up first,
does so on a phone-sized screen and lands on Invoice History.

The codes come from the browser's own clock, so nothing here depends on the machine's date.
"""

import re

import pytest
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.core import mail
from playwright.sync_api import expect

from accounts.models import AuditEvent, Organisation
from accounts.two_factor import has_two_factor
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.test_invoice_history import at, invoice
from tests.browser.helpers import assert_fits_screen

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def acme(db):
    org = OrganisationFactory(name="Acme Trading", slug="acme-trading")
    MembershipFactory(organisation=org, user=UserFactory(email="ada@acme.test"), role="admin")
    MembershipFactory(organisation=org, user=UserFactory(email="bill@acme.test"), role="billing")
    invoice(org, "INV-2026-000042", at(2026, 6, 1))
    return org


def sign_in(page, portal, email, *, next_path=""):
    page.goto(f"{portal}/accounts/login/{f'?next={next_path}' if next_path else ''}")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


def current_code(page, secret: str) -> str:
    now = page.evaluate("() => Date.now()") // 1000
    return format_hotp_value(hotp_value(secret, now // 30))


def set_up_authenticator_app(page) -> None:
    """From Security: confirm the password, read the secret shown as text, enter its code."""
    page.get_by_role("link", name="Set up authenticator app").click()
    # allauth asks for the password again before a second factor is added to a session.
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("img", name=re.compile("QR code", re.I))).to_be_visible()
    secret = page.locator("#totp-secret").input_value().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    page.locator("input[name=code]").fill(current_code(page, secret))
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("heading", name="Recovery codes")).to_be_visible()
    expect(page.get_by_role("link", name="Download as a text file")).to_be_visible()


def test_admin_requires_two_factor_and_a_billing_contact_sets_it_up_to_reach_invoices(
    new_page, portal, acme
):
    admin = new_page()
    sign_in(admin, portal, "ada@acme.test")
    expect(admin.get_by_role("heading", name="Acme Trading")).to_be_visible()

    # Settings > Organisation refuses the policy until the Admin has a second factor.
    admin.goto(f"{portal}/o/acme-trading/settings/organisation/")
    expect(
        admin.get_by_text("Only an Admin who uses two-factor sign-in can change this policy.")
    ).to_be_visible()

    # The organisation menu leads to Security.
    admin.locator(".org-menu summary").click()
    admin.locator(".org-menu").get_by_role("link", name="Security").click()
    expect(admin.get_by_role("heading", name="Security", exact=True)).to_be_visible()
    set_up_authenticator_app(admin)
    assert has_two_factor(acme.memberships.get(role="admin").user)

    admin.goto(f"{portal}/o/acme-trading/settings/organisation/")
    admin.get_by_label("Require two-factor sign-in for Admins and Billing contacts").check()
    admin.get_by_role("button", name="Save two-factor policy").click()
    expect(admin.get_by_role("status").or_(admin.locator(".messages"))).to_contain_text(
        "two-factor"
    )
    acme.refresh_from_db()
    assert acme.two_factor_policy == Organisation.TwoFactorPolicy.ADMINS_AND_BILLING
    assert AuditEvent.objects.filter(
        organisation=acme, changes__has_key="two_factor_policy"
    ).exists()

    # The Billing contact follows a link to Invoice History, on a phone.
    bill = new_page(width=390, height=800)
    invoices = "/o/acme-trading/settings/billing/invoices/"
    sign_in(bill, portal, "bill@acme.test", next_path=invoices)
    expect(bill).to_have_url(re.compile(r"/account/security/"))
    expect(
        bill.get_by_text(
            "Acme Trading requires two-factor sign-in for Admins and Billing contacts."
        )
    ).to_be_visible()
    # Nothing of the organisation opens until then.
    bill.goto(f"{portal}{invoices}")
    expect(bill).to_have_url(re.compile(r"/account/security/"))

    set_up_authenticator_app(bill)
    bill.get_by_role("link", name="I have saved them, continue").click()
    expect(bill).to_have_url(re.compile(re.escape(invoices)))
    expect(bill.get_by_role("heading", name="Billing", exact=True)).to_be_visible()
    expect(bill.get_by_role("row").filter(has_text="INV-2026-000042")).to_be_visible()
    assert_fits_screen(bill)

    # Each change was emailed to the person it concerns.
    assert sorted((m.to[0], m.subject) for m in mail.outbox) == [
        ("ada@acme.test", "An authenticator app was added to your account"),
        ("ada@acme.test", "Two-factor sign-in policy of Acme Trading changed"),
        ("bill@acme.test", "An authenticator app was added to your account"),
    ]
