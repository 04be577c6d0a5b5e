"""Ops in Django admin: plans, subscriptions and the control plane."""

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext

from accounts.models import AuditEvent
from subscriptions.models import Plan
from tests.accounts.factories import OrganisationFactory, UserFactory
from tests.subscriptions.factories import (
    ConnectionFactory,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
    plan,
)

pytestmark = pytest.mark.django_db

CHANGELISTS = [
    "subscriptions/plan",
    "subscriptions/subscription",
    "subscriptions/environment",
    "subscriptions/connection",
    "subscriptions/processflow",
]


@pytest.fixture
def ops(db):
    return UserFactory(email="ops@example.test", is_staff=True, is_superuser=True)


def _customer():
    subscription = SubscriptionFactory(organisation=OrganisationFactory())
    environment = EnvironmentFactory(organisation=subscription.organisation)
    ConnectionFactory(environment=environment)
    ProcessFlowFactory(environment=environment)
    ProcessFlowFactory(environment=environment, paused="plan_limit")


@pytest.mark.parametrize("changelist", CHANGELISTS)
def test_changelists_load_with_constant_queries(client_for, ops, changelist):
    client = client_for(ops)
    url = f"/admin/{changelist}/?q="
    _customer()
    client.get(url)
    with CaptureQueriesContext(db_connection) as few:
        assert client.get(url).status_code == 200
    expected = len(few.captured_queries)
    for _ in range(5):
        _customer()
    with CaptureQueriesContext(db_connection) as many:
        assert client.get(url).status_code == 200
    assert len(many.captured_queries) == expected


def test_plan_page_shows_prices_with_the_annual_discount(client_for, ops):
    standard = Plan.objects.get(code="standard")
    body = client_for(ops).get(f"/admin/subscriptions/plan/{standard.pk}/change/").content.decode()
    # 12 × $299.00 = $3,588.00 against $2,978.00 a year.
    assert "17.0 %" in body
    assert "29900" in body


def test_subscription_change_page_loads(client_for, ops, org):
    subscription = SubscriptionFactory(organisation=org)
    response = client_for(ops).get(f"/admin/subscriptions/subscription/{subscription.pk}/change/")
    assert response.status_code == 200
    assert "Acme Trading" in response.content.decode()


def test_switch_to_annual_at_next_renewal(client_for, ops, org, other_org):
    monthly = SubscriptionFactory(organisation=org, plan=plan("professional"))
    annual = SubscriptionFactory(organisation=other_org, billing_cycle="annual")
    response = client_for(ops).post(
        "/admin/subscriptions/subscription/",
        {"action": "switch_to_annual_at_renewal", "_selected_action": [monthly.pk, annual.pk]},
        follow=True,
    )
    body = response.content.decode()
    assert "1 subscription(s) switch to annual billing at their next renewal." in body
    assert "Globex already bills annually." in body
    monthly.refresh_from_db()
    annual.refresh_from_db()
    assert (monthly.billing_cycle, monthly.scheduled_billing_cycle) == ("monthly", "annual")
    assert (annual.billing_cycle, annual.scheduled_billing_cycle) == ("annual", "")
    event = AuditEvent.objects.get(organisation=org)
    assert event.action == "subscription.billing_cycle_scheduled"
    assert event.actor == ops
    assert event.actor_email == "ops@example.test"
    assert event.changes == {"scheduled_billing_cycle": {"old": "", "new": "annual"}}
    assert not AuditEvent.objects.filter(organisation=other_org).exists()


def test_switching_twice_is_refused_without_a_second_audit_row(client_for, ops, org):
    monthly = SubscriptionFactory(organisation=org, scheduled_billing_cycle="annual")
    response = client_for(ops).post(
        "/admin/subscriptions/subscription/",
        {"action": "switch_to_annual_at_renewal", "_selected_action": [monthly.pk]},
        follow=True,
    )
    assert (
        "Acme Trading already switches to annual billing at its next renewal."
        in response.content.decode()
    )
    assert not AuditEvent.objects.exists()


def test_subscription_fields_are_read_only(client_for, ops, org):
    subscription = SubscriptionFactory(organisation=org)
    client_for(ops).post(
        f"/admin/subscriptions/subscription/{subscription.pk}/change/",
        {"status": "ended", "current_price": 1, "plan": plan("enterprise").pk},
    )
    subscription.refresh_from_db()
    assert (subscription.status, subscription.current_price, subscription.plan.code) == (
        "active",
        29900,
        "standard",
    )


def test_customers_do_not_open_the_admin(client_for, admin):
    response = client_for(admin).get("/admin/subscriptions/subscription/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
