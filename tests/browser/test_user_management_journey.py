"""Article sections 2 and 9 in a real browser: sign up, invite, accept, change role, deactivate."""

import re

import pytest
from django.core import mail
from playwright.sync_api import expect

from accounts.models import Membership
from tests.browser.helpers import link_in_mail

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def sign_up(page, portal):
    page.goto(f"{portal}/accounts/signup/")
    page.get_by_label("Your name").fill("Ada Founder")
    page.get_by_label("Email").fill("ada@newco.test")
    page.get_by_label("Password").fill("a-long-fine-passphrase")
    page.get_by_label("Organisation name").fill("NewCo Integrations")
    page.get_by_role("button", name="Sign Up").click()
    expect(page.get_by_role("heading", name="Verify Your Email Address")).to_be_visible()
    page.goto(link_in_mail(mail.outbox[-1], "/accounts/confirm-email/"))
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("heading", name="NewCo Integrations")).to_be_visible()


def open_users(page):
    page.locator(".org-menu summary").click()
    page.locator(".org-menu").get_by_role("link", name="Settings").click()
    page.get_by_role("navigation", name="Settings").get_by_role("link", name="Users").click()
    expect(page.get_by_role("heading", name="Users", exact=True)).to_be_visible()


def test_admin_invites_a_billing_contact_who_joins_then_is_demoted_and_deactivated(
    new_page, portal
):
    admin = new_page()
    sign_up(admin, portal)

    # Settings > Users > Invite User
    open_users(admin)
    admin.get_by_role("link", name="Invite User").click()
    admin.get_by_label("Email address").fill("bill@newco.test")
    admin.get_by_label("Role").select_option(label="Billing contact")
    admin.get_by_role("button", name="Send invitation").click()
    expect(
        admin.get_by_text("Invitation sent to bill@newco.test as Billing contact")
    ).to_be_visible()
    expect(admin.get_by_role("cell", name="bill@newco.test", exact=True)).to_be_visible()

    # The invitee accepts from the email, creating an account, then signs in again.
    invitee = new_page(width=390, height=800)
    invitee.goto(link_in_mail(mail.outbox[-1], "/invitations/"))
    expect(invitee.get_by_role("heading", name="Join NewCo Integrations")).to_be_visible()
    invitee.get_by_label("Your name").fill("Bill Payer")
    invitee.get_by_label("Password").fill("another-fine-passphrase")
    invitee.get_by_role("button", name="Create account and join").click()
    expect(invitee.get_by_text("Welcome to NewCo Integrations.")).to_be_visible()
    invitee.locator(".org-menu summary").click()
    invitee.get_by_role("button", name="Sign out").click()
    invitee.goto(f"{portal}/accounts/login/")
    invitee.get_by_label("Email").fill("bill@newco.test")
    invitee.get_by_label("Password").fill("another-fine-passphrase")
    invitee.get_by_role("button", name="Sign In").click()
    expect(invitee.get_by_role("heading", name="NewCo Integrations")).to_be_visible()
    # On a phone, who is signed in and with which role is shown in the organisation menu.
    invitee.locator(".org-menu summary").click()
    expect(invitee.locator(".org-menu .menu-who")).to_have_text("bill@newco.test · Billing contact")
    invitee.locator(".org-menu summary").click()

    # The Admin changes the role, then deactivates the user.
    admin.reload()
    admin.get_by_role("link", name="Users").click()
    admin.get_by_role("link", name="Bill Payer").click()
    admin.get_by_label("Role").select_option(label="Member")
    admin.get_by_role("button", name="Save role").click()
    expect(admin.get_by_text("Bill Payer is now Member.")).to_be_visible()
    assert Membership.objects.get(user__email="bill@newco.test").role == "member"
    admin.get_by_role("button", name="Deactivate").click()
    expect(admin.get_by_text("Bill Payer is deactivated and was signed out.")).to_be_visible()

    # The invitee is signed out at once: the next page asks them to sign in.
    invitee.reload()
    expect(invitee).to_have_url(re.compile(r"/accounts/login/"))
    expect(invitee.get_by_role("heading", name="Sign In")).to_be_visible()
