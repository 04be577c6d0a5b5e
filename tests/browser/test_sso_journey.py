"""Settings > SSO in a real browser (article section 10), against the local test IdP running as
its own process: an Admin pastes the IdP metadata, saves, tests, enforces with a backup admin
and signs out; a Member then signs in with SSO and cannot use a password any more."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.subscriptions.factories import SubscriptionFactory, plan

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def idp_process():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.saml_idp_server", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{base}/metadata", timeout=1) as response:  # noqa: S310
                metadata = response.read().decode()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"test IdP did not start: {process.stdout.read().decode()[-2000:]}")
            time.sleep(0.1)
    yield metadata
    process.terminate()
    process.wait(timeout=10)


def sign_in_with_password(page, portal, email):
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


def through_the_idp(page, email):
    expect(page.get_by_role("heading", name="Test IdP sign-in")).to_be_visible()
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Sign in at the IdP").click()
    page.get_by_role("button", name="Continue to the application").click()


def test_admin_sets_up_tests_and_enforces_sso_then_a_member_signs_in_with_it(
    new_page, portal, idp_process
):
    org = OrganisationFactory(name="Acme Trading", slug="acme")
    SubscriptionFactory(organisation=org, plan=plan("enterprise"))
    admin = UserFactory(email="admin@acme.test", full_name="Ada Admin")
    MembershipFactory(organisation=org, user=admin, role="admin")
    MembershipFactory(organisation=org, user=UserFactory(email="member@acme.test"), role="member")

    page = new_page()
    sign_in_with_password(page, portal, "admin@acme.test")
    page.locator(".org-menu summary").click()
    page.locator(".org-menu").get_by_role("link", name="Settings").click()
    page.get_by_role("navigation", name="Settings").get_by_role("link", name="SSO").click()
    expect(page.get_by_role("heading", name="SSO", exact=True)).to_be_visible()
    # Our details are there before anything is configured.
    expect(page.locator("#sp-acs-url")).to_have_text(f"{portal}/sso/acme/acs/")

    page.get_by_label("Custom SAML").check()
    page.get_by_label("or IdP Metadata XML").fill(idp_process)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("Saved. Your IdP")).to_be_visible()
    expect(page.get_by_text("Saved, not tested")).to_be_visible()

    page.get_by_label("Email domain").fill("acme.test")
    page.get_by_role("button", name="Add domain").click()
    expect(page.get_by_text("acme.test now signs in through your IdP")).to_be_visible()

    # Enforcing before a test is refused.
    page.get_by_label("Backup admin (keeps password sign-in)").select_option(
        label="Ada Admin (admin@acme.test)"
    )
    page.get_by_label("Enforce SSO for all users").check()
    page.get_by_role("button", name="Save enforcement").click()
    expect(page.get_by_text("Run Test SSO successfully")).to_be_visible()

    page.get_by_role("button", name="Test SSO").click()
    through_the_idp(page, "admin@acme.test")
    expect(page.get_by_role("heading", name="SSO test succeeded")).to_be_visible()
    page.get_by_role("link", name="Back to SSO settings").click()
    expect(page.get_by_text("Last successful test")).to_be_visible()

    page.get_by_label("Backup admin (keeps password sign-in)").select_option(
        label="Ada Admin (admin@acme.test)"
    )
    page.get_by_label("Enforce SSO for all users").check()
    page.get_by_role("button", name="Save enforcement").click()
    expect(
        page.get_by_text("SSO is now enforced for all users except the backup admin")
    ).to_be_visible()
    expect(page.locator("table").get_by_text("Succeeded")).to_be_visible()

    page.locator(".org-menu summary").click()
    page.locator(".org-menu").get_by_role("button", name="Sign out").click()

    # A Member's password no longer works ...
    member = new_page()
    sign_in_with_password(member, portal, "member@acme.test")
    expect(member.get_by_text("Acme Trading requires single sign-on")).to_be_visible()
    # ... Sign in with SSO does.
    member.get_by_role("link", name="Sign in with SSO").click()
    member.get_by_label("Work email").fill("member@acme.test")
    member.get_by_role("button", name="Continue").click()
    through_the_idp(member, "member@acme.test")
    expect(member).to_have_url(f"{portal}/o/acme/")
    expect(member.locator(".org-menu summary")).to_contain_text("member@acme.test")
