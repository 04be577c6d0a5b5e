"""Invoice History for an accountant in a real browser: filter with the keyboard, page through
with the filters kept, find nothing and reset, export the CSV, and read it on a phone.

With BROWSER_SCREENSHOTS=1 each step's page is saved in test-artifacts/ to look at.
"""

import csv
import io
import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from billing.models import CreditNote, Invoice
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.test_invoice_history import at, credit_note, invoice, many_invoices
from tests.browser.helpers import assert_fits_screen

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def shot(page, name: str) -> None:
    if os.environ.get("BROWSER_SCREENSHOTS"):
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"invoice-history-{name}.png"), full_page=True)


def sign_in(page, portal, email):
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


@pytest.fixture
def ledger_co(db):
    # Dates are fixed; nothing on the page depends on today's.
    org = OrganisationFactory(name="Ledger Co", slug="ledger-co", time_zone="Europe/Berlin")
    MembershipFactory(organisation=org, user=UserFactory(email="ada@ledger.test"), role="billing")
    many_invoices(org, 30, first=at(2025, 1, 1))
    june = invoice(org, "INV-2026-000002", at(2026, 6, 1), status=Invoice.Status.PAID)
    invoice(org, "INV-2026-000003", at(2026, 7, 1), kind=Invoice.Kind.UPGRADE)
    credit_note(june, "CN-2026-000001", at(2026, 6, 10), total=2_460)
    credit_note(
        june,
        "CN-2026-000002",
        at(2026, 6, 12),
        outcome=CreditNote.Outcome.REFUND,
        status=CreditNote.Status.REFUND_PENDING,
    )
    return org


def test_an_accountant_filters_pages_exports_and_reads_on_a_phone(new_page, portal, ledger_co):
    page = new_page()
    sign_in(page, portal, "ada@ledger.test")
    page.goto(f"{portal}/o/ledger-co/settings/billing/invoices/")
    expect(page.get_by_role("row").filter(has_text="CN-2026-000002")).to_contain_text(
        "Refund pending"
    )
    shot(page, "1280-all")

    # Keyboard only: the labelled selects, then Apply filters.
    page.get_by_label("Year").focus()
    page.keyboard.press("ArrowDown")  # All years -> 2026
    page.keyboard.press("ArrowDown")  # -> 2025
    page.keyboard.press("Tab")
    page.keyboard.press("ArrowDown")  # All statuses -> Open
    page.keyboard.press("ArrowDown")  # -> Paid
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Apply filters")).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url("**?year=2025&status=paid**")
    expect(page.get_by_label("Year")).to_have_value("2025")
    expect(page.get_by_label("Status")).to_have_value("paid")
    expect(page.locator("table.invoice-history tbody > tr")).to_have_count(20)
    shot(page, "1280-filtered")

    page.get_by_role("link", name="Older →").click()
    expect(page.locator("table.invoice-history tbody > tr")).to_have_count(10)
    assert "year=2025&status=paid&before=" in page.url
    expect(page.get_by_label("Year")).to_have_value("2025")
    page.get_by_role("link", name="← Newer").click()
    expect(page.locator("table.invoice-history tbody > tr")).to_have_count(20)

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    download = download_info.value
    assert download.suggested_filename == "invoice-history-ledger-co-2025-paid.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert len(rows) == 30
    assert {row["status"] for row in rows} == {"paid"}
    assert rows[0]["total"] == "123.00"

    # Nothing matches: a clear empty state and a way back.
    page.get_by_label("Number").fill("inv-2026-9")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_text("No invoices match these filters.")).to_be_visible()
    shot(page, "1280-empty")
    page.get_by_role("link", name="reset the filters").click()
    expect(page.get_by_label("Year")).to_have_value("")
    expect(page.locator("table.invoice-history tbody > tr:not(.credit-note-row)")).to_have_count(20)

    # A wrong number is explained at the field.
    page.get_by_label("Number").fill("2026-000002")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_label("Number")).to_have_attribute("aria-invalid", "true")
    expect(
        page.get_by_text("Enter an invoice number (INV-…) or a credit note number")
    ).to_be_visible()
    shot(page, "1280-error")

    phone = new_page(width=375, height=800)
    sign_in(phone, portal, "ada@ledger.test")
    phone.goto(f"{portal}/o/ledger-co/settings/billing/invoices/?year=2026")
    expect(phone.get_by_role("row").filter(has_text="CN-2026-000001")).to_contain_text(
        "Added to balance"
    )
    assert_fits_screen(phone)
    shot(phone, "375-filtered")
    phone.get_by_label("Type").select_option("credit_note")
    phone.get_by_role("button", name="Apply filters").click()
    expect(phone.locator("table.invoice-history tbody > tr")).to_have_count(2)
    expect(phone.get_by_text("On invoice INV-2026-000002").first).to_be_visible()
    assert_fits_screen(phone)
    shot(phone, "375-credit-notes")
    phone.goto(f"{portal}/o/ledger-co/settings/billing/invoices/?year=2025&status=open")
    expect(phone.get_by_text("No invoices match these filters.")).to_be_visible()
    assert_fits_screen(phone)
    shot(phone, "375-empty")
