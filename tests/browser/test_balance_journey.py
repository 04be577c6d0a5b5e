"""The customer balance in a real browser: ops adjust it in Django admin with a reason, the
customer's Admin finds it under Settings > Billing > Balance, on a phone too."""

import pytest
from playwright.sync_api import expect

from accounts.models import AuditEvent
from billing.models import BalanceEntry
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.browser.helpers import billing_staff, page_width

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def sign_in(page, portal, email, *, admin_site=False):
    if admin_site:
        page.goto(f"{portal}/admin/login/")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        return
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


def test_ops_add_credit_and_the_customer_sees_it_on_a_phone(new_page, portal):
    org = OrganisationFactory(name="Balance Co", slug="balance-co")
    MembershipFactory(organisation=org, user=UserFactory(email="boss@balance.test"), role="admin")
    ops = billing_staff("bea@portal.test")

    page = new_page()
    sign_in(page, portal, "bea@portal.test", admin_site=True)
    page.goto(f"{portal}/admin/billing/balanceentry/")
    page.get_by_role("link", name="Adjust balance").click()
    page.get_by_label("Organisation:", exact=True).fill("balance-co")
    page.get_by_label("Currency:", exact=True).select_option("USD")
    page.get_by_label("Amount:", exact=True).fill("50.00")
    page.get_by_role("button", name="Adjust balance").click()
    expect(page.get_by_text("This field is required.")).to_be_visible()  # no reason given
    assert not BalanceEntry.objects.exists()
    page.get_by_label("Reason (kept").fill("Goodwill after the outage")
    page.get_by_role("button", name="Adjust balance").click()
    expect(
        page.get_by_text("Balance of Balance Co adjusted by $50.00; it is now $50.00.")
    ).to_be_visible()
    assert AuditEvent.objects.get(action="billing.balance_adjusted").actor == ops

    phone = new_page(width=375, height=800)
    sign_in(phone, portal, "boss@balance.test")
    phone.goto(f"{portal}/o/balance-co/settings/billing/invoices/")
    # Keyboard users reach the tab like any link.
    balance_tab = phone.get_by_role("link", name="Balance", exact=True)
    balance_tab.focus()
    phone.keyboard.press("Enter")
    expect(phone.get_by_role("heading", name="Account balance")).to_be_visible()
    expect(phone.locator(".balance-amount")).to_have_text("$50.00")
    row = phone.get_by_role("row").filter(has_text="Adjustment by our team")
    expect(row).to_contain_text("+$50.00")
    expect(phone.get_by_text("Goodwill after the outage")).to_have_count(0)
    # Nothing overflows the narrow screen but the table, which scrolls on its own.
    width = page_width(phone)
    assert width <= 375
