"""Usage history in a real browser: from the Usage section of Settings > Subscription to the
last twelve usage months, one month's daily chart, and the CSV download; the month table fits
a phone without scrolling sideways."""

from pathlib import Path

import pytest
from dateutil.relativedelta import relativedelta
from django.utils import timezone
from playwright.sync_api import expect

from billing.models import OverageCharge
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.factories import issued_invoice
from tests.browser.helpers import assert_fits_screen
from tests.subscriptions.factories import SubscriptionFactory
from usage.models import UsageCounter
from usage.months import usage_month_of

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

# Transactions of the last fourteen usage months, oldest first (the limit is 50,000).
MONTHS = [31_000, 28_500, 44_000, 47_250, 52_340, 39_900, 41_000, 61_200, 48_800, 50_000]
MONTHS += [35_500, 57_010, 46_300, 12_480]


def seed(now):
    org = OrganisationFactory(name="Metered Co", slug="metered-co", time_zone="Europe/Berlin")
    MembershipFactory(organisation=org, user=UserFactory(email="boss@metered.test"), role="admin")
    subscription = SubscriptionFactory(
        organisation=org, anchor_at=now - relativedelta(months=len(MONTHS) - 1, days=9)
    )
    subscription.organisation = org
    at = now
    months = []
    for _ in MONTHS:
        start, end = usage_month_of(subscription, at)
        months.insert(0, (start, end))
        at = start - relativedelta(microseconds=1)
    for number, ((start, end), used) in enumerate(zip(months, MONTHS, strict=True), start=1):
        first = start.astimezone(org.tzinfo).date()
        days = (end - start).days if end <= now else (now - start).days + 1
        share = used // days
        UsageCounter.objects.bulk_create(
            UsageCounter(
                organisation=org,
                month_start=start,
                day=first + relativedelta(days=n),
                transactions=share + (used - share * days if n == 0 else 0),
            )
            for n in range(days)
        )
        if used > 50_000 and end <= now:
            units = -(-(used - 50_000) // 1000)
            OverageCharge.objects.create(
                organisation=org,
                subscription=subscription,
                invoice=issued_invoice(
                    organisation=org, number=f"INV-2026-{number:06d}", currency="USD"
                ),
                month_start=start,
                month_end=end,
                transactions=used,
                transaction_limit=50_000,
                units=units,
                unit_amount=500,
                amount=units * 500,
                currency="USD",
                created_at=end,
            )
    return org


def sign_in(page, portal):
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill("boss@metered.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


def test_usage_history_from_the_usage_section(new_page, portal):
    seed(timezone.now())
    page = new_page()
    sign_in(page, portal)
    page.goto(f"{portal}/o/metered-co/settings/subscription/")
    page.get_by_role("region", name="Usage").get_by_role("link", name="Usage history").click()
    expect(page.get_by_role("heading", name="Usage history")).to_be_visible()
    table = page.get_by_role("table")
    expect(table.locator("tbody tr")).to_have_count(12)
    current = table.locator("tbody tr").first
    expect(current).to_contain_text("So far")
    expect(current).to_contain_text("12,480")
    expect(page.locator(".usage-chart-bar")).to_have_count(12)
    expect(page.locator(".usage-chart-bar.is-over")).to_have_count(3)
    expect(table.get_by_role("link", name="Invoice INV-2026-000012 (PDF)")).to_be_visible()

    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename.startswith("usage-history-metered-co-")
    lines = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 13
    assert lines[1].endswith(",12480,50000,24,0,0.00,USD,,no overage so far")

    # A month opens on its daily chart; its neighbour is one link away.
    table.locator("tbody tr").nth(2).get_by_role("link").first.click()
    expect(page.get_by_role("heading", name="Usage month")).to_contain_text("Usage month")
    expect(page.locator(".usage-chart-bar").first).to_be_attached()
    expect(page.locator("dl.facts")).to_contain_text("57,010")
    expect(page.locator("dl.facts")).to_contain_text("$40.00")

    # On a phone the month table stacks: nothing scrolls sideways.
    phone = new_page(width=375, height=800)
    sign_in(phone, portal)
    phone.goto(f"{portal}/o/metered-co/settings/subscription/usage/")
    expect(phone.get_by_role("table").locator("tbody tr")).to_have_count(12)
    assert_fits_screen(phone)
    wrap = phone.locator(".table-wrap").first
    assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth")
