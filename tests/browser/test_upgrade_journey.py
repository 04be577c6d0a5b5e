"""Upgrade Plan in a real browser (article section 3): the quote shown equals the charge on the
invoice PDF."""

import io

import pytest
from playwright.sync_api import expect
from pypdf import PdfReader

from billing.models import Invoice
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.helpers import subscribe

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def test_upgrade_shows_the_quote_that_the_invoice_charges(
    new_page, portal, localstripe, time_machine
):
    from django.utils import timezone

    # The quote is prorated to the second and computed again at confirmation: the clock of
    # the test and the live server stands still, so both see the same instant.
    time_machine.move_to(timezone.now(), tick=False)
    org = OrganisationFactory(name="Upgrade Co", slug="upgrade-co")
    admin = UserFactory(email="boss@upgrade.test")
    MembershipFactory(organisation=org, user=admin, role="admin")
    subscribe(org, now=timezone.now() - timezone.timedelta(days=10))

    page = new_page()
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill("boss@upgrade.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.goto(f"{portal}/o/upgrade-co/settings/subscription/")
    page.get_by_role("link", name="Upgrade Plan").click()
    page.get_by_role("link", name="Upgrade to Enterprise").click()
    expect(page.get_by_role("heading", name="Upgrade to Enterprise")).to_be_visible()
    quoted = page.locator("[data-quote-total]").inner_text()
    expect(page.get_by_text("Visa ending 4242")).to_be_visible()
    page.get_by_role("button", name=f"Pay {quoted} and upgrade").click()
    expect(page.get_by_text("You are now on the Enterprise plan.")).to_be_visible()

    invoice = Invoice.objects.get(kind="upgrade")
    page.goto(f"{portal}/o/upgrade-co/settings/billing/invoices/")
    with page.expect_download() as download_info:
        page.get_by_role("link", name=invoice.number).click()
    with open(download_info.value.path(), "rb") as pdf:
        text = PdfReader(io.BytesIO(pdf.read())).pages[0].extract_text()
    assert invoice.number in text
    assert quoted in text
