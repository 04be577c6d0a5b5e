"""Sync Info > Export in a real browser (article section 12): a Member sees the records, picks a
date range and downloads them as CSV."""

import csv
import io
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.subscriptions.factories import EnvironmentFactory, ProcessFlowFactory
from tests.usage.test_sync_info_page import insert_rows

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def test_a_member_exports_a_date_range_as_csv(new_page, portal):
    from django.utils import timezone

    org = OrganisationFactory(name="Export Co", slug="export-co", time_zone="Europe/London")
    member = UserFactory(email="member@export.test")
    MembershipFactory(organisation=org, user=member, role="member")
    flow = ProcessFlowFactory(
        organisation=org,
        environment=EnvironmentFactory(organisation=org, name="Production"),
        name="Shopify orders to SAP",
    )
    now = timezone.now().replace(microsecond=0)
    insert_rows(
        flow,
        [
            {"record_key": "SO-1001", "synced_at": now - timedelta(days=2), "message": "Created"},
            {
                "record_key": "SO-1002",
                "synced_at": now - timedelta(days=1),
                "status": "failed",
                "message": 'Customer "ACME, Inc." not found',
            },
            {"record_key": "SO-0001", "synced_at": now - timedelta(days=40), "message": "Old"},
        ],
    )

    page = new_page()
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill("member@export.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sync Info").click()
    expect(page.get_by_role("heading", name="Sync Info", exact=True)).to_be_visible()
    rows = page.locator("table.sync-info tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("SO-1002")
    expect(rows.first).to_contain_text("Failed")
    expect(rows.first).to_contain_text("Shopify orders to SAP")

    page.get_by_role("link", name="Export", exact=True).click()
    expect(page.get_by_role("heading", name="Export Sync Info")).to_be_visible()
    today = timezone.localtime(timezone.now(), org.tzinfo).date()
    page.get_by_label("From").fill((today - timedelta(days=7)).isoformat())
    page.get_by_label("To").fill(today.isoformat())
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename == (f"sync-info-{today - timedelta(days=7)}-{today}.csv")
    with open(download.path(), newline="", encoding="utf-8") as file:
        records = list(csv.reader(io.StringIO(file.read(), newline="")))
    assert records[0] == [
        "synced_at",
        "flow",
        "flow_id",
        "record_key",
        "status",
        "direction",
        "message",
    ]
    assert [(r[3], r[4], r[6]) for r in records[1:]] == [
        ("SO-1001", "success", "Created"),
        ("SO-1002", "failed", 'Customer "ACME, Inc." not found'),
    ]
    assert all(r[1] == "Shopify orders to SAP" and r[2] == str(flow.public_id) for r in records[1:])

    # A range that ends before it starts is refused on the page, with nothing downloaded.
    page.get_by_label("From").fill(today.isoformat())
    page.get_by_label("To").fill((today - timedelta(days=1)).isoformat())
    page.get_by_role("button", name="Download CSV").click()
    expect(page.get_by_text("The end date must be on or after the start date.")).to_be_visible()
