"""Downgrade services (article section 3;
docs/architecture.md#decision-a-downgrade-waits-for-the-renewal): review, schedule, cancel,
and pausing the flows above the new limit at the renewal."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from accounts.audit import Actor
from accounts.models import AuditEvent, Membership, OutgoingEmail
from core.errors import ServiceError
from subscriptions.models import Plan, PlanChange, ProcessFlow, Subscription
from subscriptions.plan_changes import (
    downgrade_apply_flows,
    downgrade_cancel,
    downgrade_review,
    downgrade_schedule,
)
from tests.accounts.factories import MembershipFactory, UserFactory
from tests.subscriptions.factories import (
    PERIOD_START,
    ConnectionFactory,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
    plan,
)

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 15, 10, 0, tzinfo=UTC)
RENEWAL = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def actor(admin):
    return Actor(user=admin, ip_address="192.0.2.10")


@pytest.fixture
def flows(org, professional, production):
    """12 active flows (Standard allows 10), oldest first, named Flow 01 .. Flow 12."""
    return [
        ProcessFlowFactory(
            environment=production,
            name=f"Flow {n:02}",
            created_at=PERIOD_START - timedelta(days=30 - n),
        )
        for n in range(1, 13)
    ]


def names(flows):
    return [flow.name for flow in flows]


def ids(flows):
    return [str(flow.public_id) for flow in flows]


def schedule(subscription, actor, keep=None, to="standard"):
    return downgrade_schedule(
        subscription=subscription, actor=actor, plan=plan(to), keep_flow_ids=keep, now=NOW
    )


def state(subscription):
    """What a refused request must leave untouched."""
    return (
        list(PlanChange.objects.values_list("status", "to_plan__code", "keep_flow_ids")),
        AuditEvent.objects.count(),
        OutgoingEmail.objects.count(),
        Subscription.objects.values_list("plan__code", flat=True).get(pk=subscription.pk),
    )


# Review ----------------------------------------------------------------------------------


def test_review_lists_features_limits_price_and_what_is_above(org, professional, flows):
    production = flows[0].environment
    # Created after the Production fixture (made at the real now).
    test_env = EnvironmentFactory(
        organisation=org, name="Test", created_at=datetime(2030, 1, 1, tzinfo=UTC)
    )
    ConnectionFactory(environment=production, name="Old", created_at=PERIOD_START)
    for n in range(1, 4):
        ConnectionFactory(environment=test_env, name=f"C{n}", created_at=NOW + timedelta(n))
    ProcessFlowFactory(environment=production, name="Mine, paused", paused="user")

    review = downgrade_review(subscription=professional, plan=plan("standard"))

    assert review.features_removed == [
        "Premium support → Standard support",
        "Sync Info retention 90 → 30 days",
        "Snapshot retention 30 → 7 days",
    ]
    assert [(c.label, c.old, c.new) for c in review.limits_shrinking] == [
        ("Integrations (app connections)", 10, 3),
        ("Active ProcessFlows", 50, 10),
        ("Environments", 2, 1),
        ("Transactions per month", 250_000, 50_000),
    ]
    assert (review.price_old, review.price_new, review.currency) == (79900, 29900, "USD")
    assert review.effective_at == professional.current_period_end
    assert names(review.active_flows) == names(flows)  # oldest first, the paused one left out
    assert names(review.default_keep) == names(flows[:10])
    assert review.flows_above == 2
    # 4 connections for 3: the newest is above; 2 environments for 1: the newer one.
    assert (review.connections_above, names(review.connections_over)) == (1, ["C3"])
    assert (review.environments_above, names(review.environments_over)) == (1, ["Test"])


def test_review_of_enterprise_to_standard_names_sso_and_invoicing(org):
    subscription = SubscriptionFactory(organisation=org, plan=plan("enterprise"))
    review = downgrade_review(subscription=subscription, plan=plan("standard"))
    assert review.features_removed == [
        "SAML single sign-on",
        "Premium support → Standard support",
        "Sync Info retention 365 → 30 days",
        "Snapshot retention 90 → 7 days",
        "Purchase order invoicing",
    ]
    Plan.objects.filter(code="standard").update(allows_bank_transfer=False)
    review = downgrade_review(subscription=subscription, plan=plan("standard"))
    assert review.features_removed[-1] == "Bank transfer / purchase order invoicing"


def test_review_when_everything_fits(org, professional, production):
    ProcessFlowFactory.create_batch(3, environment=production)
    review = downgrade_review(subscription=professional, plan=plan("standard"))
    assert (review.flows_above, review.connections_above, review.environments_above) == (0, 0, 0)
    assert len(review.default_keep) == 3


# Schedule --------------------------------------------------------------------------------


def test_schedule_with_the_default_keep(org, admin, billing_user, professional, flows, actor):
    change = schedule(professional, actor)

    assert (change.kind, change.status, change.from_plan.code, change.to_plan.code) == (
        "downgrade",
        "scheduled",
        "professional",
        "standard",
    )
    assert (change.billing_cycle, change.effective_at, change.created_by) == (
        "monthly",
        RENEWAL,
        admin,
    )
    assert change.keep_flow_ids == ids(flows[:10])
    professional.refresh_from_db()
    assert professional.plan.code == "professional"  # not before the renewal
    assert ProcessFlow.objects.filter(status="active").count() == 12
    event = AuditEvent.objects.get()
    assert (event.action, event.actor, event.ip_address) == (
        "subscription.downgrade_scheduled",
        admin,
        "192.0.2.10",
    )
    assert event.changes == {
        "plan": {"old": "professional", "new": "standard"},
        "effective_at": {"old": None, "new": "2026-12-01T09:00:00+00:00"},
        "flows_to_pause": {"old": None, "new": ["Flow 11", "Flow 12"]},
    }
    emails = OutgoingEmail.objects.filter(template="downgrade_scheduled").order_by("to_email")
    assert sorted(e.to_email for e in emails) == sorted(
        [org.primary_email, "admin@acme.test", "billing@acme.test"]
    )
    message = emails[0]
    assert message.subject == "Your plan changes to Standard on 1 December 2026"
    assert "from Professional to Standard" in message.body_text
    assert "  - Flow 11 (Production)\n  - Flow 12 (Production)\n" in message.body_text
    assert "<li>Flow 11 (Production)</li><li>Flow 12 (Production)</li>" in message.body_html


def test_schedule_with_an_explicit_keep_fills_free_places_with_the_oldest(
    professional, flows, actor
):
    chosen = [flows[11], flows[10], flows[5]]
    change = schedule(professional, actor, keep=ids(chosen))
    # The 3 chosen, then the 7 oldest others (Flow 01-05, 07, 08); Flow 09 and 10 pause.
    kept = set(change.keep_flow_ids)
    assert kept == set(ids(chosen + flows[:5] + flows[6:8]))
    assert AuditEvent.objects.get().changes["flows_to_pause"]["new"] == ["Flow 09", "Flow 10"]


def test_keeping_more_flows_than_the_new_limit_is_refused(professional, flows, actor):
    before = state(professional)
    with pytest.raises(ServiceError) as error:
        schedule(professional, actor, keep=ids(flows[:11]))
    assert error.value.message == (
        "The Standard plan includes 10 active ProcessFlows: keep at most 10 (you chose 11)."
    )
    assert error.value.field == "keep"
    assert state(professional) == before


@pytest.mark.parametrize("kind", ["other_org", "paused", "unknown", "not_a_uuid"])
def test_keeping_a_flow_that_is_not_one_of_our_active_flows_is_refused(
    other_org, professional, flows, actor, kind
):
    stranger = {
        "other_org": lambda: str(ProcessFlowFactory(environment__organisation=other_org).public_id),
        "paused": lambda: str(
            ProcessFlowFactory(environment=flows[0].environment, paused="user").public_id
        ),
        "unknown": lambda: str(uuid.uuid4()),
        "not_a_uuid": lambda: "flow-1",
    }[kind]()
    before = state(professional)
    with pytest.raises(ServiceError) as error:
        schedule(professional, actor, keep=[ids(flows)[0], stranger])
    assert error.value.message == (
        "Choose the ProcessFlows to keep among your organisation's active ProcessFlows."
    )
    assert state(professional) == before


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("professional", "You are already on the Professional plan."),
        (
            "enterprise",
            "Enterprise is a higher plan than Professional. Use Upgrade Plan for a higher plan: "
            "it takes effect at once.",
        ),
    ],
)
def test_same_or_higher_plan_is_refused(professional, flows, actor, to, message):
    before = state(professional)
    with pytest.raises(ServiceError) as error:
        schedule(professional, actor, to=to)
    assert error.value.message == message
    assert state(professional) == before


@pytest.mark.parametrize("how", ["not_public", "no_price_in_currency"])
def test_retired_plan_is_refused(professional, actor, how):
    if how == "not_public":
        Plan.objects.filter(code="standard").update(is_public=False)
    else:
        plan("standard").prices.filter(currency="USD").delete()
    before = state(professional)
    with pytest.raises(ServiceError) as error:
        schedule(professional, actor)
    assert error.value.message == (
        "The Standard plan is retired or unknown: choose one of the plans listed."
    )
    assert state(professional) == before


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("incomplete", "Your subscription is waiting for first payment, so its plan cannot"),
        ("suspended", "Your subscription is suspended, so its plan cannot be changed now."),
        ("ended", "Your subscription is ended, so its plan cannot be changed now."),
    ],
)
def test_subscription_that_does_not_serve_is_refused(org, actor, status, message):
    subscription = SubscriptionFactory(organisation=org, plan=plan("professional"), status=status)
    with pytest.raises(ServiceError) as error:
        schedule(subscription, actor)
    assert error.value.message.startswith(message)
    assert not PlanChange.objects.exists()


@pytest.mark.parametrize("status", ["past_due", "grace"])
def test_past_due_and_grace_may_still_downgrade(org, actor, status):
    subscription = SubscriptionFactory(organisation=org, plan=plan("professional"), status=status)
    assert schedule(subscription, actor).status == "scheduled"


def test_pending_cancellation_is_refused(professional, actor):
    Subscription.objects.filter(pk=professional.pk).update(
        cancel_at_period_end=True, canceled_at=NOW
    )
    before = state(professional)
    with pytest.raises(ServiceError) as error:
        schedule(professional, actor)
    assert error.value.message == (
        "Your subscription is cancelled and ends at the end of this period. Undo the "
        "cancellation first to change your plan."
    )
    assert state(professional) == before


def test_a_new_schedule_replaces_the_previous_one(org, actor):
    subscription = SubscriptionFactory(organisation=org, plan=plan("enterprise"))
    first = schedule(subscription, actor, to="professional")
    second = schedule(subscription, actor, to="standard")
    first.refresh_from_db()
    assert (first.status, first.closed_at) == ("canceled", NOW)
    assert (second.status, second.to_plan.code) == ("scheduled", "standard")
    assert PlanChange.objects.filter(status="scheduled").get() == second
    assert AuditEvent.objects.order_by("pk").last().changes["replaced"] == {
        "old": "professional",
        "new": "standard",
    }


# Cancel ----------------------------------------------------------------------------------


def test_scheduled_then_cancelled(admin, professional, flows, actor):
    change = schedule(professional, actor)
    cancelled = downgrade_cancel(subscription=professional, actor=actor, now=NOW)
    assert cancelled.pk == change.pk
    change.refresh_from_db()
    assert (change.status, change.closed_at) == ("canceled", NOW)
    event = AuditEvent.objects.order_by("pk").last()
    assert (event.action, event.actor, event.changes) == (
        "subscription.downgrade_canceled",
        admin,
        {"scheduled_plan": {"old": "standard", "new": None}},
    )


def test_cancel_without_a_scheduled_change_is_refused(professional, actor):
    with pytest.raises(ServiceError) as error:
        downgrade_cancel(subscription=professional, actor=actor, now=NOW)
    assert error.value.message == "No plan change is scheduled."
    assert not AuditEvent.objects.exists()


# At the renewal --------------------------------------------------------------------------


def _switch(subscription, change):
    """What billing's renewal does before calling downgrade_apply_flows."""
    subscription.plan = change.to_plan
    subscription.save(update_fields=["plan"])
    change.status = PlanChange.Status.APPLIED
    change.save(update_fields=["status"])


def test_apply_pauses_exactly_the_flows_not_kept(org, professional, flows, actor):
    user_paused = ProcessFlowFactory(environment=flows[0].environment, paused="user")
    change = schedule(professional, actor, keep=ids([flows[11], flows[10]]))
    # Since scheduling: a kept flow was paused by hand, and a new flow was added.
    ProcessFlow.objects.filter(pk=flows[11].pk).update(
        status="paused", pause_reason="user", paused_at=NOW
    )
    added = ProcessFlowFactory(environment=flows[0].environment, name="New", created_at=NOW)
    _switch(professional, change)
    OutgoingEmail.objects.all().delete()

    paused = downgrade_apply_flows(subscription=professional, change=change, now=RENEWAL)

    # Kept: Flow 11 (chosen, still active) and the oldest others: Flow 01 .. Flow 09.
    assert names(paused) == ["Flow 10", "New"]
    by_name = dict(ProcessFlow.objects.values_list("name", "status"))
    assert [n for n, s in sorted(by_name.items()) if s == "active"] == [
        *(f"Flow {n:02}" for n in range(1, 10)),
        "Flow 11",
    ]
    reasons = {
        flow.name: (flow.pause_reason, flow.paused_at)
        for flow in ProcessFlow.objects.filter(status="paused")
    }
    assert reasons == {
        "Flow 10": ("plan_limit", RENEWAL),
        "New": ("plan_limit", RENEWAL),
        "Flow 12": ("user", NOW),
        user_paused.name: ("user", PERIOD_START),
    }
    assert added.name == "New"
    emails = OutgoingEmail.objects.filter(template="downgrade_applied")
    assert emails.count() == 2  # primary email and the Admin
    message = emails.first()
    assert message.subject == "You are now on the Standard plan: 2 ProcessFlows paused"
    assert "  - Flow 10 (Production)\n  - New (Production)\n" in message.body_text
    assert "Flow 12" not in message.body_text
    event = AuditEvent.objects.get(action="subscription.downgrade_flows_paused")
    assert event.changes == {"paused_flows": {"old": None, "new": ["Flow 10", "New"]}}


def test_apply_mentions_connections_and_environments_kept_above_the_limit(
    org, professional, production, actor
):
    EnvironmentFactory(organisation=org, name="Test")
    ConnectionFactory.create_batch(4, environment=production)
    change = schedule(professional, actor)
    _switch(professional, change)

    assert downgrade_apply_flows(subscription=professional, change=change, now=RENEWAL) == []

    message = OutgoingEmail.objects.filter(template="downgrade_applied").first()
    assert message.subject == "You are now on the Standard plan"
    assert "none was paused" in message.body_text
    assert "integrations (app connections): 4 of 3" in message.body_text
    assert "environments: 2 of 1" in message.body_text
    assert "no new ones can be created until you are under the limit" in message.body_text


def test_emails_go_to_active_admins_and_billing_contacts_only(org, admin, professional, actor):
    MembershipFactory(organisation=org, role="billing", user=UserFactory(email="Bill@Acme.test"))
    MembershipFactory(organisation=org, role="member", user=UserFactory(email="m@acme.test"))
    MembershipFactory(
        organisation=org,
        role="admin",
        status=Membership.Status.DEACTIVATED,
        user=UserFactory(email="gone@acme.test"),
    )
    schedule(professional, actor)
    assert sorted(
        OutgoingEmail.objects.filter(template="downgrade_scheduled").values_list(
            "to_email", flat=True
        )
    ) == sorted([org.primary_email, "admin@acme.test", "bill@acme.test"])
