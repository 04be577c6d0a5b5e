"""Settings > Subscription (article section 2): plan, cycle, renewal date and included limits."""

import re
from datetime import UTC, datetime

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.urls import NoReverseMatch, reverse

from accounts.models import Organisation
from tests.subscriptions.factories import (
    ConnectionFactory,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
    plan,
)

pytestmark = pytest.mark.django_db


def page(client, org):
    response = client.get(reverse("subscriptions:settings", args=[org.slug]))
    assert response.status_code == 200
    return response.content.decode()


def text(body):
    """The page's text with tags dropped and white space collapsed, to read facts from."""
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def limit_row(body, label):
    match = re.search(rf"<th scope=\"row\">{re.escape(label)}</th>(.*?)</tr>", body, re.S)
    assert match, label
    return text(match.group(1))


@pytest.mark.parametrize("role", ["admin", "billing_user"])
def test_admin_and_billing_contact_see_plan_cycle_renewal_and_limits(
    request, client_for, org, production, role
):
    SubscriptionFactory(
        organisation=org,
        plan=plan("professional"),
        current_period_end=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
    )
    ConnectionFactory.create_batch(4, environment=production)
    ProcessFlowFactory.create_batch(3, environment=production)
    ProcessFlowFactory.create_batch(2, environment=production, paused="user")
    body = page(client_for(request.getfixturevalue(role)), org)
    facts = text(body)
    assert "Plan Professional For growing teams with production and test environments." in facts
    assert "Billing cycle Monthly" in facts
    assert '<span class="badge badge--ok">Active</span>' in body
    assert "Renewal date 1 December 2026" in facts
    assert "Price $799.00 per month (before tax)" in facts
    assert "Payment method Card" in facts
    assert "Support Premium support" in facts
    assert "Sync Info retention 90 days" in facts
    assert "Snapshot retention 30 days" in facts
    assert limit_row(body, "Integrations (app connections)") == "10 4"
    assert limit_row(body, "ProcessFlows (active)") == "50 3"
    assert limit_row(body, "Environments") == "2 1"
    assert limit_row(body, "Transactions per month") == "250,000 0"
    assert "you have 2 paused" in facts
    assert 'aria-current="page">Subscription</a>' in body


def test_renewal_date_is_in_the_organisations_time_zone(client_for, org, admin):
    Organisation.objects.filter(pk=org.pk).update(time_zone="Asia/Tokyo")
    # 20:00 UTC on 30 November is already 1 December in Tokyo.
    SubscriptionFactory(organisation=org, current_period_end=datetime(2026, 11, 30, 20, tzinfo=UTC))
    assert "Renewal date 1 December 2026" in text(page(client_for(admin), org))


@pytest.mark.parametrize(
    ("currency", "cycle", "price"),
    [
        ("EUR", "annual", "€7,460.00 per year"),
        ("GBP", "monthly", "£649.00 per month"),
        ("USD", "annual", "$7,958.00 per year"),
    ],
)
def test_price_per_period_in_the_subscription_currency(
    client_for, org, admin, currency, cycle, price
):
    SubscriptionFactory(
        organisation=org, plan=plan("professional"), currency=currency, billing_cycle=cycle
    )
    facts = text(page(client_for(admin), org))
    assert f"Price {price}" in facts
    assert f"Billing cycle {cycle.title()}" in facts


def test_scheduled_switch_to_annual_is_shown(client_for, org, admin):
    SubscriptionFactory(
        organisation=org, plan=plan("professional"), scheduled_billing_cycle="annual"
    )
    facts = text(page(client_for(admin), org))
    assert (
        "Billing cycle Monthly Switches to annual billing at the next renewal: $7,958.00 per year."
        in facts
    )


def test_counts_above_the_limit_after_a_downgrade_are_flagged(client_for, org, admin):
    SubscriptionFactory(organisation=org)  # Standard: 1 environment
    EnvironmentFactory.create_batch(2, organisation=org)
    body = page(client_for(admin), org)
    assert limit_row(body, "Environments") == "1 2 Above limit"
    assert limit_row(body, "Integrations (app connections)") == "3 0"


@pytest.mark.parametrize(
    ("status", "badge", "alert"),
    [
        ("incomplete", "badge--info", "Your subscription starts once its first invoice is paid."),
        ("past_due", "badge--warn", "A payment failed."),
        ("grace", "badge--warn", "your account is in its grace period"),
        ("suspended", "badge--err", "Your account is suspended for an unpaid invoice"),
    ],
)
def test_status_badge_and_what_to_do(client_for, org, admin, status, badge, alert):
    SubscriptionFactory(organisation=org, status=status)
    body = page(client_for(admin), org)
    assert f'class="badge {badge}"' in body
    assert alert in text(body)


def test_no_subscription_shows_how_to_choose_a_plan(client_for, org, admin):
    body = page(client_for(admin), org)
    assert "No plan yet" in body
    assert "Acme Trading has no subscription." in body
    try:
        choose_url = reverse("billing:choose_plan", args=[org.slug])
    except NoReverseMatch:  # the plan chooser is another issue's page
        assert "contact your APPSeCONNECT account manager" in body
    else:
        assert f'<a class="button button--primary" href="{choose_url}">Choose a plan</a>' in body
    assert "Renewal date" not in body


def test_member_cannot_open_the_page(client_for, org, subscription, member):
    response = client_for(member).get(reverse("subscriptions:settings", args=[org.slug]))
    assert response.status_code == 403


def test_another_organisation_is_404(client_for, org, other_org, subscription, outsider):
    response = client_for(outsider).get(reverse("subscriptions:settings", args=[org.slug]))
    assert response.status_code == 404


def test_constant_number_of_queries_whatever_the_counts(client_for, org, admin, production):
    SubscriptionFactory(organisation=org, plan=plan("enterprise"))
    client = client_for(admin)
    page(client, org)
    with CaptureQueriesContext(db_connection) as few:
        page(client, org)
    expected = len(few.captured_queries)
    for _ in range(4):
        environment = EnvironmentFactory(organisation=org)
        ConnectionFactory.create_batch(3, environment=environment)
        ProcessFlowFactory.create_batch(3, environment=environment)
        ProcessFlowFactory(environment=environment, paused="user")
    with CaptureQueriesContext(db_connection) as many:
        body = page(client, org)
    assert len(many.captured_queries) == expected
    assert limit_row(body, "ProcessFlows (active)") == "250 12"
