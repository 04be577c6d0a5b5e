"""Monitor transaction usage in a real browser (article section 11): batches posted through the
machine API show up in Settings > Subscription > Usage as the progress bar and the daily chart."""

import json

import pytest
from playwright.sync_api import expect

from accounts.audit import Actor
from subscriptions.models import Plan
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.months import usage_month_of
from usage.services import api_key_create

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def test_admin_sees_the_usage_bar_and_the_daily_chart(new_page, portal):
    from django.utils import timezone

    now = timezone.now()
    Plan.objects.filter(code="standard").update(monthly_transactions=200)
    org = OrganisationFactory(name="Metered Co", slug="metered-co")
    admin = UserFactory(email="boss@metered.test")
    MembershipFactory(organisation=org, user=admin, role="admin")
    subscription = SubscriptionFactory(
        organisation=org,
        plan=Plan.objects.get(code="standard"),
        anchor_at=now - timezone.timedelta(days=10),
    )
    environment = EnvironmentFactory(organisation=org, name="Production")
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    _, plain = api_key_create(environment=environment, actor=Actor(user=admin), name="rt", now=now)

    page = new_page()
    for batch, (count, days_ago) in enumerate([(90, 0), (50, 2), (24, 5)]):
        at = (now - timezone.timedelta(days=days_ago)).isoformat()
        records = [
            {
                "flow_id": str(flow.public_id),
                "record_key": f"order-{batch}-{n}",
                "status": "success",
                "direction": "inbound",
                "synced_at": at,
            }
            for n in range(count)
        ]
        response = page.request.post(
            f"{portal}/api/v1/sync-info",
            data=json.dumps({"records": records}),
            headers={
                "Authorization": f"Bearer {plain}",
                "Idempotency-Key": f"batch-{batch}",
                "Content-Type": "application/json",
            },
        )
        assert response.status == 201, response.text()

    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill("boss@metered.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.goto(f"{portal}/o/metered-co/")
    page.get_by_role("link", name="Settings").first.click()
    page.get_by_role("navigation", name="Settings").get_by_role("link", name="Subscription").click()

    usage = page.get_by_role("region", name="Usage")
    expect(usage).to_contain_text("This month's transactions: 164 of 200 (82%)")
    bar = usage.get_by_role("progressbar")
    expect(bar).to_have_attribute("value", "164")
    expect(bar).to_have_attribute("max", "200")
    expect(bar).to_have_class("usage-bar usage-bar--warning")
    expect(usage).to_contain_text("80% alert emailed on")
    expect(usage.get_by_role("link", name="Upgrade your plan")).to_be_visible()

    start, end = usage_month_of(subscription, now)
    zone = org.tzinfo
    days = (
        (end - timezone.timedelta(microseconds=1)).astimezone(zone).date()
        - start.astimezone(zone).date()
    ).days + 1
    chart = usage.locator("svg.usage-chart-svg")
    expect(chart).to_be_visible()
    bars = chart.locator("rect.usage-chart-bar")
    expect(bars).to_have_count(days)
    heights = [float(h) for h in bars.evaluate_all("els => els.map(e => e.getAttribute('height'))")]
    assert sum(h > 0 for h in heights) == 3
    today = chart.locator("rect.is-today title")
    expect(today).to_have_text(f"{now.astimezone(zone):%a %-d %b} (today): 90 transactions")
    # The bar stays inside its track and the chart inside the card, at desktop width.
    bar_box, card_box = bar.bounding_box(), usage.bounding_box()
    assert bar_box["x"] + bar_box["width"] <= card_box["x"] + card_box["width"]
