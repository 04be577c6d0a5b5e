"""axe at 1280 and 375 px on the two-factor pages the URL matrix cannot open (they need a fresh
password or a sign-in in progress): set up an authenticator app from the secret shown, the
recovery codes shown once, Security with it on, removal, and the code asked at sign-in."""

import re

import pytest
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value

from tests.accounts.factories import PASSWORD
from tests.browser.pages import OVERFLOW_JS, axe_in_every_page, axe_problems

pytestmark = pytest.mark.django_db(transaction=True)

SHOTS = None  # set to a directory path to keep screenshots while working on the pages


def check(page, name):
    problems = []
    for width in (1280, 375):
        page.set_viewport_size({"width": width, "height": 900})
        problems += [f"{name} @{width}: {p}" for p in axe_problems(page)]
        if width == 375:
            problems += [f"{name} @375 overflows: {p}" for p in page.evaluate(OVERFLOW_JS)]
        if SHOTS:
            page.screenshot(path=f"{SHOTS}/{name}-{width}.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    return problems


def current_code(page, secret):
    now = page.evaluate("() => Date.now()") // 1000
    return format_hotp_value(hotp_value(secret, now // 30))


def test_two_factor_pages_are_accessible(browser, portal, admin):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    axe_in_every_page(context)
    page = context.new_page()
    problems = []

    def sign_in():
        page.goto(f"{portal}/accounts/login/")
        page.fill("input[name=login]", admin.email)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")

    sign_in()
    page.goto(f"{portal}/account/security/")
    problems += check(page, "security-off")
    page.click("text=Set up authenticator app")
    # allauth asks for the password again before a second factor changes, even right after
    # signing in; the page is allauth's, in our layout.
    assert "/accounts/reauthenticate/" in page.url
    problems += check(page, "reauthenticate")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Confirm')")
    assert "/account/security/app/" in page.url
    problems += check(page, "totp-activate")
    secret = page.input_value("#totp-secret").replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    page.fill("input[name=code]", current_code(page, secret))
    page.click("button:has-text('Turn on')")
    assert "/account/security/recovery-codes/" in page.url
    problems += check(page, "recovery-codes")
    page.goto(f"{portal}/account/security/")
    problems += check(page, "security-on")
    page.goto(f"{portal}/account/security/app/remove/")
    problems += check(page, "totp-deactivate")
    right = int(current_code(page, secret))
    page.fill("input[name=code]", f"{(right + 1) % 1_000_000:06d}")
    page.click("button:has-text('Remove authenticator app')")
    problems += check(page, "totp-deactivate-refused")

    context.clear_cookies()
    sign_in()
    assert "/accounts/2fa/authenticate/" in page.url
    problems += check(page, "sign-in-code")
    context.close()
    assert problems == []
