"""A security key end to end in a real browser: Chromium's virtual authenticator (DevTools'
WebAuthn domain) plays the key. The user adds it from Security (allauth's key pages, which
lead to our recovery codes page), signs out, and signs in again with the password and the key
instead of a code; the change is audited and emailed.

WebAuthn needs a secure origin: the live server is http://localhost, which browsers treat as
one, and the server side is told to accept that origin (MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN, on
in development only).
"""

import re

import pytest
from allauth.mfa.models import Authenticator
from django.core import mail
from playwright.sync_api import expect

from accounts.models import AuditEvent
from tests.accounts.factories import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def sign_in_with_password(page, portal, email):
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


def test_a_security_key_is_added_from_security_and_signs_in_instead_of_a_code(
    browser, portal, admin, org, settings
):
    settings.MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = True
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    devtools = context.new_cdp_session(page)
    devtools.send("WebAuthn.enable")
    key = devtools.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "usb",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )["authenticatorId"]

    sign_in_with_password(page, portal, admin.email)
    page.goto(f"{portal}/account/security/")
    page.get_by_role("link", name="Manage security keys").click()
    page.get_by_role("link", name=re.compile("Add", re.I)).click()
    # allauth asks for the password again before a second factor is added.
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Confirm").click()
    page.get_by_label("Name").fill("Desk key")
    page.get_by_role("button", name="Add", exact=True).click()
    # The first second factor comes with recovery codes: shown once, on our page, downloadable.
    page.wait_for_url(re.compile(r"/account/security/recovery-codes/"))
    codes = Authenticator.objects.get(user=admin, type=Authenticator.Type.RECOVERY_CODES)
    unused = codes.wrap().get_unused_codes()
    assert len(unused) == 10
    expect(page.get_by_text(unused[0], exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Download as a text file")).to_be_visible()
    assert Authenticator.objects.filter(user=admin, type=Authenticator.Type.WEBAUTHN).count() == 1
    assert len(devtools.send("WebAuthn.getCredentials", {"authenticatorId": key})["credentials"])
    assert AuditEvent.objects.filter(
        organisation=org, action="two_factor.security_key_added"
    ).exists()
    assert any(
        message.to == [admin.email] and "security key" in message.subject.lower()
        for message in mail.outbox
    ), [message.subject for message in mail.outbox]

    context.clear_cookies()
    sign_in_with_password(page, portal, admin.email)
    expect(page).to_have_url(re.compile(r"/accounts/2fa/authenticate/"))
    page.get_by_role("button", name="Use a security key").click()
    expect(page.get_by_role("heading", name="Acme Trading")).to_be_visible()
    context.close()
