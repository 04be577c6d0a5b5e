"""Settings > Subscription > Change Plan (article section 3): choose a lower plan, review,
confirm; the scheduled change on the Subscription page and its Cancel scheduled change."""

import re
from datetime import timedelta

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import AuditEvent
from subscriptions.models import Plan, PlanChange, Subscription
from tests.accounts.factories import UserFactory
from tests.subscriptions.factories import (
    PERIOD_START,
    ConnectionFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
    plan,
)

pytestmark = pytest.mark.django_db


def text(body):
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def url(name, org, *args):
    return reverse(f"subscriptions:{name}", args=[org.slug, *args])


def messages_of(response):
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def flows(professional, production):
    """12 active flows (Standard allows 10), oldest first."""
    return [
        ProcessFlowFactory(
            environment=production,
            name=f"Flow {n:02}",
            created_at=PERIOD_START - timedelta(days=30 - n),
        )
        for n in range(1, 13)
    ]


def checked_ids(body):
    return re.findall(r'name="keep" value="([0-9a-f-]+)" checked', body)


# Change Plan -----------------------------------------------------------------------------


def test_change_plan_lists_the_lower_plans_with_prices(client_for, org, admin):
    SubscriptionFactory(organisation=org, plan=plan("enterprise"))
    response = client_for(admin).get(url("change_plan", org))
    assert response.status_code == 200
    body = response.content.decode()
    facts = text(body)
    assert (
        "Professional For growing teams with production and test environments. $799.00 / month"
        in facts
    )
    assert "Standard For a first integration between a few apps. $299.00 / month" in facts
    assert (
        "10 integrations · 50 active ProcessFlows · 2 environments · 250,000 transactions" in facts
    )
    assert facts.index("Professional For growing") < facts.index("Standard For a first")
    assert f'href="{url("change_plan_review", org, "professional")}"' in body
    assert f'href="{url("change_plan_review", org, "standard")}"' in body
    assert f'href="{url("settings", org)}"' in body
    assert url("change_plan_review", org, "enterprise") not in body


def test_change_plan_leaves_out_retired_plans(client_for, org, admin):
    SubscriptionFactory(organisation=org, plan=plan("enterprise"))
    Plan.objects.filter(code="standard").update(is_public=False)
    body = client_for(admin).get(url("change_plan", org)).content.decode()
    assert url("change_plan_review", org, "standard") not in body
    assert url("change_plan_review", org, "professional") in body


def test_change_plan_on_the_lowest_plan_is_an_empty_state(client_for, org, admin, subscription):
    body = text(client_for(admin).get(url("change_plan", org)).content.decode())
    assert "You are on our smallest plan" in body
    assert "Standard is the lowest plan we offer" in body


# Review ----------------------------------------------------------------------------------


def test_review_shows_what_is_removed_and_preselects_the_oldest_flows(
    client_for, org, admin, professional, production, flows
):
    ConnectionFactory.create_batch(4, environment=production)
    response = client_for(admin).get(url("change_plan_review", org, "standard"))
    assert response.status_code == 200
    body = response.content.decode()
    facts = text(body)
    assert "Review: Professional → Standard" in facts
    assert "takes effect on 1 December 2026 , at your next renewal, not immediately" in facts
    assert (
        "WARNING: Before downgrading, ensure your active ProcessFlows and connections fit" in facts
    )
    assert "2 of your 12 active ProcessFlows will pause on 1 December 2026" in facts
    assert "Price $799.00 → $299.00 per month (before tax)" in facts
    assert (
        "Features removed Premium support → Standard support Sync Info retention 90 → 30 days "
        "Snapshot retention 30 → 7 days Limits" in facts
    )
    assert "Integrations (app connections) 10 3 4 1 above" in facts
    assert "Active ProcessFlows 50 10 12 2 above" in facts
    assert "Environments 2 1 1" in facts
    assert "Transactions per month 250,000 50,000" in facts
    assert "Keep at most 10." in facts
    assert checked_ids(body) == [str(f.public_id) for f in flows[:10]]
    assert body.count('name="keep"') == 12
    assert "1 integration above the limit of 3" in facts
    assert (
        "are kept and keep working after the change, but no new connection can be created" in facts
    )


def test_review_without_flows_above_the_limit_has_no_checkboxes(
    client_for, org, admin, professional, production
):
    ProcessFlowFactory.create_batch(3, environment=production)
    body = client_for(admin).get(url("change_plan_review", org, "standard")).content.decode()
    assert 'name="keep"' not in body
    assert "All 3 active ProcessFlows fit within the limit of 10: none will pause." in text(body)


def test_confirm_with_the_default_keep(client_for, org, admin, professional, flows):
    response = client_for(admin).post(url("change_plan_review", org, "standard"), follow=True)
    assert response.redirect_chain == [(url("settings", org), 302)]
    assert messages_of(response) == [
        "Your plan changes to Standard on 1 December 2026, at the renewal. Until then nothing "
        "changes; you can cancel the change here."
    ]
    change = PlanChange.objects.get()
    assert (change.status, change.to_plan.code) == ("scheduled", "standard")
    assert change.keep_flow_ids == [str(f.public_id) for f in flows[:10]]


def test_confirm_with_chosen_flows(client_for, org, admin, professional, flows):
    keep = [str(f.public_id) for f in flows[2:12]]
    response = client_for(admin).post(url("change_plan_review", org, "standard"), {"keep": keep})
    assert response.status_code == 302
    assert PlanChange.objects.get().keep_flow_ids == keep


def test_keeping_more_than_the_limit_is_a_form_error_and_keeps_the_choice(
    client_for, org, admin, professional, flows
):
    keep = [str(f.public_id) for f in flows[:11]]
    response = client_for(admin).post(url("change_plan_review", org, "standard"), {"keep": keep})
    assert response.status_code == 400
    body = response.content.decode()
    assert (
        "The Standard plan includes 10 active ProcessFlows: keep at most 10 (you chose 11)."
        in text(body)
    )
    assert checked_ids(body) == keep
    assert not PlanChange.objects.exists()
    assert not AuditEvent.objects.exists()


def test_keeping_another_organisations_flow_is_a_form_error(
    client_for, org, other_org, admin, professional, flows
):
    theirs = ProcessFlowFactory(environment__organisation=other_org)
    response = client_for(admin).post(
        url("change_plan_review", org, "standard"), {"keep": [str(theirs.public_id)]}
    )
    assert response.status_code == 400
    assert (
        "Choose the ProcessFlows to keep among your organisation&#x27;s active ProcessFlows."
        in response.content.decode()
    )
    assert not PlanChange.objects.exists()


def test_unknown_plan_is_404(client_for, org, admin, professional):
    response = client_for(admin).get(url("change_plan_review", org, "platinum"))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("professional", "You are already on the Professional plan."),
        ("enterprise", "Enterprise is a higher plan than Professional. Use Upgrade Plan"),
        ("retired", "The Retired plan is retired or unknown: choose one of the plans listed."),
    ],
)
@pytest.mark.parametrize("method", ["get", "post"])
def test_same_higher_or_retired_plan_is_refused_with_a_message(
    client_for, org, admin, professional, flows, code, message, method
):
    retired = plan("standard")
    retired.pk, retired.code, retired.name, retired.rank = None, "retired", "Retired", 0
    retired.is_public = False
    retired.save()
    response = getattr(client_for(admin), method)(url("change_plan_review", org, code), follow=True)
    assert response.redirect_chain == [(url("change_plan", org), 302)]
    assert messages_of(response)[0].startswith(message)
    assert not PlanChange.objects.exists()


# The Subscription page -------------------------------------------------------------------


def test_subscription_page_actions_for_admins(client_for, org, admin, professional):
    body = client_for(admin).get(url("settings", org)).content.decode()
    assert f'<a class="button" href="{url("change_plan", org)}">Change Plan</a>' in body
    assert f'<a class="button" href="{url("cancel", org)}">Cancel Subscription</a>' in body


def test_billing_contact_sees_no_plan_actions(client_for, org, billing_user, professional):
    body = client_for(billing_user).get(url("settings", org)).content.decode()
    assert "Change Plan" not in body
    assert "Cancel Subscription" not in body


def test_scheduled_change_is_shown_and_can_be_cancelled(
    client_for, org, admin, professional, flows
):
    client = client_for(admin)
    client.post(url("change_plan_review", org, "standard"))
    facts = text(client.get(url("settings", org)).content.decode())
    assert "Your plan changes to Standard on 1 December 2026" in facts
    assert "Premium support → Standard support" in facts
    assert "Active ProcessFlows 50 → 10" in facts
    assert (
        "2 ProcessFlows will pause at the renewal (reason: plan limit): Flow 11, Flow 12." in facts
    )
    assert "Cancel scheduled change" in facts

    response = client.post(url("scheduled_change_cancel", org), follow=True)
    assert response.redirect_chain == [(url("settings", org), 302)]
    assert messages_of(response) == [
        "The change to Standard is cancelled: you stay on Professional."
    ]
    assert PlanChange.objects.get().status == "canceled"
    assert "Your plan changes to" not in text(response.content.decode())


def test_subscription_page_with_a_scheduled_change_has_constant_queries(
    client_for, org, admin, professional, production, flows
):
    client = client_for(admin)
    client.post(url("change_plan_review", org, "standard"))
    client.get(url("settings", org))
    with CaptureQueriesContext(db_connection) as few:
        client.get(url("settings", org))
    ProcessFlowFactory.create_batch(5, environment=production)
    with CaptureQueriesContext(db_connection) as many:
        body = client.get(url("settings", org)).content.decode()
    assert len(many.captured_queries) == len(few.captured_queries)
    assert "7 ProcessFlows will pause" in text(body)


def test_cancel_when_nothing_is_scheduled(client_for, org, admin, professional):
    response = client_for(admin).post(url("scheduled_change_cancel", org), follow=True)
    assert messages_of(response) == ["No plan change is scheduled."]


def test_cancel_is_post_only(client_for, org, admin, professional):
    assert client_for(admin).get(url("scheduled_change_cancel", org)).status_code == 405


def test_billing_contact_sees_the_scheduled_change_without_the_button(
    client_for, org, billing_user, professional
):
    PlanChange.objects.create(
        subscription=professional,
        kind="downgrade",
        status="scheduled",
        from_plan=plan("professional"),
        to_plan=plan("standard"),
        billing_cycle="monthly",
        effective_at=professional.current_period_end,
    )
    facts = text(client_for(billing_user).get(url("settings", org)).content.decode())
    assert "Your plan changes to Standard on 1 December 2026" in facts
    assert "Cancel scheduled change" not in facts


# Access ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["member", "billing_user"])
@pytest.mark.parametrize(
    ("method", "name", "args"),
    [
        ("get", "change_plan", []),
        ("get", "change_plan_review", ["standard"]),
        ("post", "change_plan_review", ["standard"]),
        ("post", "scheduled_change_cancel", []),
    ],
)
def test_members_and_billing_contacts_are_forbidden(
    request, client_for, org, professional, flows, role, method, name, args
):
    PlanChange.objects.create(
        subscription=professional,
        kind="downgrade",
        status="scheduled",
        from_plan=plan("professional"),
        to_plan=plan("enterprise"),
        billing_cycle="monthly",
        effective_at=professional.current_period_end,
    )
    client = client_for(request.getfixturevalue(role))
    response = getattr(client, method)(url(name, org, *args))
    assert response.status_code == 403
    assert list(PlanChange.objects.values_list("status", "to_plan__code")) == [
        ("scheduled", "enterprise")
    ]
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    ("method", "name", "args"),
    [
        ("get", "change_plan", []),
        ("get", "change_plan_review", ["standard"]),
        ("post", "change_plan_review", ["standard"]),
        ("post", "scheduled_change_cancel", []),
    ],
)
def test_another_organisation_is_404(client_for, org, professional, outsider, method, name, args):
    response = getattr(client_for(outsider), method)(url(name, org, *args))
    assert response.status_code == 404
    assert not PlanChange.objects.exists()


def test_suspended_subscription_cannot_change_plan(client_for, org, admin, professional):
    Subscription.objects.filter(pk=professional.pk).update(status="suspended")
    facts = text(client_for(admin).get(url("change_plan", org)).content.decode())
    assert "Your subscription is suspended, so its plan cannot be changed now." in facts
    assert url("change_plan_review", org, "standard") not in facts


# Django admin ----------------------------------------------------------------------------


def test_admin_shows_the_pending_downgrade_and_the_plan_change_history(
    client_for, org, admin, professional, flows
):
    client_for(admin).post(url("change_plan_review", org, "standard"))
    ops = UserFactory(email="ops@example.test", is_staff=True, is_superuser=True)
    response = client_for(ops).get(f"/admin/subscriptions/subscription/{professional.pk}/change/")
    assert response.status_code == 200
    facts = text(response.content.decode())
    assert "Pending downgrade: To Standard on 2026-12-01 09:00 UTC" in facts
    assert "Plan change history" in facts
    assert "Downgrade Scheduled for renewal Professional Standard Monthly" in facts
    assert "Cancel at period end:" in facts
