"""At 375 px a customer on a phone reads every row of Invoice History and Users without
scrolling sideways: tables turn into stacked rows (table.stack in static/css/app.css), each
cell labelled with its column, still read as a table by screen readers; and a new email shows
its "New" marker in Notifications.

With BROWSER_SCREENSHOTS=1 each page is saved in test-artifacts/ to look at.
"""

import os
import uuid
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import OutgoingEmail
from billing.models import Invoice
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.test_invoice_history import at, invoice, many_invoices

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PHONE = 375

# Per table: is it wider than its container; per Status cell: does it reach past the screen.
MEASURE = """([table, column]) => {
  const t = document.querySelector(table);
  const cells = [...t.querySelectorAll(`tbody td[data-label="${column}"]`)];
  return {
    tableTooWide: t.scrollWidth > t.parentElement.clientWidth,
    pageTooWide: document.scrollingElement.scrollWidth > innerWidth,
    cells: cells.length,
    offScreen: cells.filter(c => {
      const r = c.getBoundingClientRect();
      return r.width === 0 || r.left < 0 || r.right > innerWidth;
    }).map(c => c.innerText),
  };
}"""


def shot(page, name: str) -> None:
    if os.environ.get("BROWSER_SCREENSHOTS"):
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"phone-{name}.png"), full_page=True)


def sign_in(page, portal, email):
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    expect(page.get_by_role("heading", level=1)).to_be_visible()


@pytest.fixture
def phone_co(db):
    # Dates are fixed; nothing on the page depends on today's.
    org = OrganisationFactory(name="Phone Co", slug="phone-co", time_zone="Europe/Berlin")
    admin = UserFactory(
        email="ada.with.a.rather.long.address@accounts-payable.phone-co.test",
        full_name="Ada Lovelace-Byron, Countess of Lovelace",
    )
    MembershipFactory(organisation=org, user=admin, role="admin")
    for n in range(3):
        MembershipFactory(organisation=org, role="billing" if n else "member")
    many_invoices(org, 4, first=at(2026, 1, 1), prefix="INV-2026", start=10)
    invoice(org, "INV-2026-000002", at(2026, 6, 1))  # open: "Open · … due …", the long badge
    return org, admin


def read_by_chromium(page) -> dict:
    """Chromium's own accessibility tree (what a screen reader gets, CSS applied): the names
    of the column headers and the cells."""
    cdp = page.context.new_cdp_session(page)
    nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    read = {"columnheader": [], "cell": []}
    for node in nodes:
        role = node.get("role", {}).get("value")
        if role in read:
            read[role].append(node.get("name", {}).get("value", ""))
    return read


def status_cells_on_screen(page, table: str, column: str, rows: int) -> None:
    measured = page.evaluate(MEASURE, [table, column])
    assert measured == {
        "tableTooWide": False,
        "pageTooWide": False,
        "cells": rows,
        "offScreen": [],
    }


def test_invoice_history_and_users_fit_a_phone(new_page, portal, phone_co):
    org, admin = phone_co
    page = new_page(width=PHONE)
    sign_in(page, portal, admin.email)

    page.goto(f"{portal}/o/{org.slug}/settings/billing/invoices/")
    status_cells_on_screen(page, "table.invoice-history", "Status", 5)
    open_row = page.get_by_role("row").filter(has_text="INV-2026-000002")
    open_row.scroll_into_view_if_needed()
    expect(open_row.get_by_text("Open · ")).to_be_in_viewport(ratio=1)
    # Still a table for screen readers: the cell is read with its column's header.
    expect(page.get_by_role("columnheader", name="Status")).to_have_count(1)
    expect(open_row.get_by_role("cell").filter(has_text="Open · ")).to_have_count(1)
    shot(page, "invoice-history-375")

    page.goto(f"{portal}/o/{org.slug}/settings/users/")
    status_cells_on_screen(page, "table.stack", "Status", 4)
    expect(page.get_by_role("cell", name=admin.email)).to_be_visible()
    expect(page.get_by_role("columnheader", name="Email")).to_have_count(1)
    read = read_by_chromium(page)
    assert [name.lower() for name in read["columnheader"]] == [
        "name",
        "email",
        "role",
        "status",
        "2fa",
    ]
    assert len(read["cell"]) == 20
    assert f"Email {admin.email}" in read["cell"]
    assert read["cell"].count("Status Active") == 4
    shot(page, "users-375")

    # The same pages at 1280 px keep their columns side by side.
    wide = new_page()
    sign_in(wide, portal, admin.email)
    wide.goto(f"{portal}/o/{org.slug}/settings/users/")
    expect(wide.get_by_role("columnheader", name="Status")).to_be_visible()
    assert wide.evaluate(
        "document.querySelector('table.stack thead').getBoundingClientRect().height > 10"
    )
    shot(wide, "users-1280")
    assert Invoice.objects.filter(organisation=org).count() == 5  # only read


def test_a_new_notification_shows_its_marker_and_link_on_a_phone(new_page, portal, phone_co):
    org, admin = phone_co
    page = new_page(width=PHONE)
    sign_in(page, portal, admin.email)
    OutgoingEmail.objects.create(
        organisation=org,
        message_id=uuid.uuid4(),
        to_email=admin.email,
        template="card_expiring",
        subject="Your card ending 4242 expires at the end of the month, update it to keep paying",
        body_text="Update it.",
        created_at=timezone.now(),
    )

    page.goto(f"{portal}/o/{org.slug}/notifications/")
    entry = page.get_by_role("listitem").filter(has_text="Your card ending 4242")
    badge = entry.get_by_text("New", exact=True)
    expect(badge).to_be_in_viewport(ratio=1)
    box = badge.bounding_box()
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= PHONE
    link = entry.get_by_role("link", name="Payment method")
    expect(link).to_be_in_viewport(ratio=1)
    assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE
    shot(page, "notifications-375")

    link.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Billing")
