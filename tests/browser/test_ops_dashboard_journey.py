"""The ops dashboard in a real browser: Billing staff read the twelve months' charts and their
data tables by keyboard, and download October's finance export, on a desktop and on a phone."""

import csv
import io
import os
from pathlib import Path

import pytest
import time_machine
from playwright.sync_api import expect

from tests.accounts.factories import PASSWORD
from tests.browser.helpers import assert_fits_screen, billing_staff
from tests.portal.test_ops_charts import NOW, world  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

# Set to a folder to keep the pages' screenshots (to look at them).
SCREENSHOTS = os.environ.get("OPS_SCREENSHOTS")


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=True):
        yield


def sign_in(page, portal):
    page.goto(f"{portal}/admin/login/?next=/admin/")
    page.get_by_label("Email").fill("bea@portal.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


@pytest.mark.parametrize("width", [1280, 375])
def test_billing_staff_read_the_charts_and_export_a_month(
    new_page,
    portal,
    clock,
    world,  # noqa: F811 - the fixture imported above
    width,
):
    billing_staff("bea@portal.test")
    page = new_page(width=width)
    sign_in(page, portal)
    expect(page.get_by_role("heading", name="Last 12 months (Dec 2025 – Nov 2026)")).to_be_visible()
    chart = page.get_by_role("img", name="Monthly recurring revenue (MRR) (EUR)")
    expect(chart).to_be_visible()
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"dashboard-{width}.png"), full_page=True)
    # Nothing wider than the screen.
    assert_fits_screen(page)

    # The data table behind the chart, opened from the keyboard.
    summary = page.locator("#ops-chart-mrr-eur-caption ~ details summary")
    summary.focus()
    page.keyboard.press("Enter")
    table = page.get_by_role("table", name="Monthly recurring revenue (MRR) (EUR), by month")
    expect(table).to_be_visible()
    expect(table.get_by_role("row", name="Nov 2026 (so far)")).to_contain_text("€200.01")

    # A quarter not started yet: a message, no file.
    form = page.locator("form.ops-finance-form")
    form.get_by_role("radio", name="A quarter").check()
    form.get_by_role("spinbutton", name="Year").fill("2027")
    form.get_by_role("combobox", name="Quarter").select_option(label="Q1 (January – March)")
    form.get_by_role("button", name="Download CSV").click()
    expect(page.get_by_role("alert")).to_have_text("Q1 2027 (January – March) has not started yet.")
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"export-error-{width}.png"), full_page=True)
    assert_fits_screen(page)

    # October 2026, by keyboard: the month radio, then the fields, then the button.
    form = page.locator("form.ops-finance-form")
    form.get_by_role("radio", name="A month").check()
    form.get_by_role("spinbutton", name="Year").fill("2026")
    form.get_by_role("combobox", name="Month").select_option(label="10 – October")
    with page.expect_download() as download:
        form.get_by_role("button", name="Download CSV").focus()
        page.keyboard.press("Enter")
    assert download.value.suggested_filename == "finance-export-2026-10.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    # A's October invoice, F's void one (both issued on 1 October), the credit note of 3 Oct.
    assert [(r["type"], r["date"], r["total"], r["currency"], r["status"]) for r in rows] == [
        ("invoice", "2026-10-01", "123.00", "EUR", "paid"),
        ("invoice", "2026-10-01", "615.00", "EUR", "void"),
        ("credit_note", "2026-10-03", "-24.60", "EUR", "issued"),
    ]
