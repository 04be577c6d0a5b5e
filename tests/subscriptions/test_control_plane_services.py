"""Environments, connections and ProcessFlows within the plan limits (services)."""

import threading
from datetime import UTC, datetime

import pytest
from django.db import connection as db_connection

from accounts.audit import Actor
from accounts.models import AuditEvent
from core.errors import ServiceError
from subscriptions.models import Connection, Environment, ProcessFlow
from subscriptions.selectors import plan_limits, usage_counts
from subscriptions.services import (
    connection_create,
    environment_create,
    process_flow_create,
    process_flow_pause,
    process_flow_resume,
)
from tests.accounts.factories import OrganisationFactory
from tests.subscriptions.factories import (
    ConnectionFactory,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def actor(admin):
    return Actor(user=admin, ip_address="203.0.113.7")


def audit_actions(org):
    return list(
        AuditEvent.objects.filter(organisation=org).order_by("pk").values_list("action", flat=True)
    )


# Environments ----------------------------------------------------------------------------


def test_environment_is_created_within_the_limit_and_audited(org, subscription, actor, admin):
    environment = environment_create(organisation=org, actor=actor, now=NOW, name="  Production  ")
    assert environment.name == "Production"
    assert environment.organisation == org
    assert environment.created_by == admin
    assert environment.created_at == NOW
    event = AuditEvent.objects.get(organisation=org)
    assert event.action == "environment.created"
    assert event.actor == admin
    assert event.ip_address == "203.0.113.7"
    assert event.target_id == str(environment.public_id)
    assert event.changes == {"name": {"old": None, "new": "Production"}}


def test_environment_above_the_limit_is_refused_and_nothing_changes(
    org, subscription, production, actor
):
    with pytest.raises(ServiceError) as refused:
        environment_create(organisation=org, actor=actor, now=NOW, name="Test")
    assert refused.value.message == (
        "Your Standard plan includes 1 environment and you have 1. Upgrade your plan to add more."
    )
    assert list(Environment.objects.filter(organisation=org)) == [production]
    assert audit_actions(org) == []


def test_environment_names_are_unique_ignoring_case(org, professional, production, actor):
    with pytest.raises(ServiceError) as refused:
        environment_create(organisation=org, actor=actor, now=NOW, name="PRODUCTION")
    assert refused.value.message == "There is already an environment called PRODUCTION."
    assert refused.value.field == "name"
    assert Environment.objects.filter(organisation=org).count() == 1


def test_blank_environment_name_is_refused(org, subscription, actor):
    with pytest.raises(ServiceError) as refused:
        environment_create(organisation=org, actor=actor, now=NOW, name="   ")
    assert refused.value.message == "Enter the environment name."
    assert not Environment.objects.exists()


def test_another_organisations_environments_do_not_count(org, other_org, subscription, actor):
    EnvironmentFactory.create_batch(2, organisation=other_org)
    environment_create(organisation=org, actor=actor, now=NOW, name="Production")
    assert Environment.objects.filter(organisation=org).count() == 1


# Without a serving subscription ----------------------------------------------------------


def test_without_a_subscription_nothing_can_be_created(org, actor):
    with pytest.raises(ServiceError) as refused:
        environment_create(organisation=org, actor=actor, now=NOW, name="Production")
    assert refused.value.message == (
        "Your organisation has no subscription yet. Choose a plan in Settings > Subscription "
        "to add environments."
    )
    assert not Environment.objects.exists()
    assert audit_actions(org) == []


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (
            "incomplete",
            "Your subscription is waiting for its first payment. Pay the first invoice in "
            "Settings > Billing to add ProcessFlows.",
        ),
        (
            "suspended",
            "Your subscription is suspended because a payment failed. Use Retry Payment in "
            "Settings > Billing > Payment Method to add ProcessFlows.",
        ),
        (
            "ended",
            "Your subscription has ended. Choose a plan in Settings > Subscription to add "
            "ProcessFlows.",
        ),
    ],
)
def test_a_subscription_that_does_not_serve_cannot_create(org, production, actor, status, message):
    SubscriptionFactory(organisation=org, status=status)
    with pytest.raises(ServiceError) as refused:
        process_flow_create(
            organisation=org, actor=actor, now=NOW, name="Orders", environment=production
        )
    assert refused.value.message == message
    assert not ProcessFlow.objects.exists()


@pytest.mark.parametrize("status", ["past_due", "grace"])
def test_past_due_and_grace_still_serve(org, production, actor, status):
    SubscriptionFactory(organisation=org, status=status)
    flow = process_flow_create(
        organisation=org, actor=actor, now=NOW, name="Orders", environment=production
    )
    assert flow.status == "active"


# Connections -----------------------------------------------------------------------------


def test_connection_is_created_in_the_environment(org, subscription, production, actor):
    created = connection_create(
        organisation=org,
        actor=actor,
        now=NOW,
        name="CRM",
        application="Salesforce",
        environment=production,
    )
    assert (created.name, created.application, created.environment) == (
        "CRM",
        "Salesforce",
        production,
    )
    event = AuditEvent.objects.get(organisation=org)
    assert event.action == "connection.created"
    assert event.changes["environment"] == {"old": None, "new": "Production"}


def test_connection_above_the_integrations_limit_is_refused(org, subscription, production, actor):
    ConnectionFactory.create_batch(3, environment=production)
    with pytest.raises(ServiceError) as refused:
        connection_create(
            organisation=org,
            actor=actor,
            now=NOW,
            name="ERP",
            application="SAP Business One",
            environment=production,
        )
    assert refused.value.message == (
        "Your Standard plan includes 3 integrations (app connections) and you have 3. "
        "Upgrade your plan to add more."
    )
    assert Connection.objects.filter(organisation=org).count() == 3
    assert audit_actions(org) == []


def test_connection_in_another_organisations_environment_is_refused(
    org, other_org, subscription, actor
):
    theirs = EnvironmentFactory(organisation=other_org)
    with pytest.raises(ServiceError) as refused:
        connection_create(
            organisation=org,
            actor=actor,
            now=NOW,
            name="CRM",
            application="Salesforce",
            environment=theirs,
        )
    assert refused.value.message == "Choose one of your organisation's environments."
    assert refused.value.field == "environment"
    assert not Connection.objects.exists()


def test_connection_names_are_unique_per_environment(org, subscription, production, actor):
    ConnectionFactory(environment=production, name="CRM")
    with pytest.raises(ServiceError) as refused:
        connection_create(
            organisation=org,
            actor=actor,
            now=NOW,
            name="crm",
            application="HubSpot",
            environment=production,
        )
    assert refused.value.message == "Production already has a connection called crm."
    assert Connection.objects.count() == 1


# ProcessFlows ----------------------------------------------------------------------------


def test_process_flow_is_created_active_with_its_connections(org, subscription, production, actor):
    crm = ConnectionFactory(environment=production, name="CRM")
    erp = ConnectionFactory(environment=production, name="ERP")
    flow = process_flow_create(
        organisation=org,
        actor=actor,
        now=NOW,
        name="Orders to ERP",
        environment=production,
        source=crm,
        target=erp,
    )
    assert (flow.status, flow.pause_reason, flow.source, flow.target) == ("active", "", crm, erp)
    event = AuditEvent.objects.get(organisation=org)
    assert event.action == "process_flow.created"
    assert event.changes["source"] == {"old": None, "new": "CRM"}


def test_process_flow_above_the_active_limit_is_refused(org, subscription, production, actor):
    ProcessFlowFactory.create_batch(10, environment=production)
    with pytest.raises(ServiceError) as refused:
        process_flow_create(
            organisation=org, actor=actor, now=NOW, name="One more", environment=production
        )
    assert refused.value.message == (
        "Your Standard plan includes 10 active ProcessFlows and you have 10. "
        "Pause a ProcessFlow or upgrade your plan to add more."
    )
    assert ProcessFlow.objects.count() == 10
    assert audit_actions(org) == []


def test_paused_process_flows_do_not_count_against_the_limit(org, subscription, production, actor):
    ProcessFlowFactory.create_batch(9, environment=production)
    ProcessFlowFactory.create_batch(3, environment=production, paused="user")
    process_flow_create(
        organisation=org, actor=actor, now=NOW, name="Tenth", environment=production
    )
    assert ProcessFlow.objects.filter(status="active").count() == 10


def test_process_flow_connections_must_be_in_its_environment(org, professional, production, actor):
    test_env = EnvironmentFactory(organisation=org, name="Test")
    sandbox_crm = ConnectionFactory(environment=test_env, name="Sandbox CRM")
    with pytest.raises(ServiceError) as refused:
        process_flow_create(
            organisation=org,
            actor=actor,
            now=NOW,
            name="Orders",
            environment=production,
            source=sandbox_crm,
        )
    assert refused.value.message == (
        "Sandbox CRM is in the environment Test. Choose a connection of Production, where this "
        "ProcessFlow runs."
    )
    assert refused.value.field == "source"
    assert not ProcessFlow.objects.exists()


def test_process_flow_source_and_target_differ(org, subscription, production, actor):
    crm = ConnectionFactory(environment=production)
    with pytest.raises(ServiceError) as refused:
        process_flow_create(
            organisation=org,
            actor=actor,
            now=NOW,
            name="Loop",
            environment=production,
            source=crm,
            target=crm,
        )
    assert refused.value.message == "The source and the target must be different connections."
    assert not ProcessFlow.objects.exists()


def test_process_flow_with_another_organisations_connection_is_refused(
    org, other_org, subscription, production, actor
):
    theirs = ConnectionFactory(environment=EnvironmentFactory(organisation=other_org))
    with pytest.raises(ServiceError) as refused:
        process_flow_create(
            organisation=org,
            actor=actor,
            now=NOW,
            name="Orders",
            environment=production,
            target=theirs,
        )
    assert refused.value.message == "Choose one of your organisation's connections."
    assert not ProcessFlow.objects.exists()


# Pause and resume ------------------------------------------------------------------------


def test_pause_by_a_user_and_resume(org, subscription, production, actor):
    flow = ProcessFlowFactory(environment=production, name="Orders")
    paused = process_flow_pause(organisation=org, actor=actor, now=NOW, flow=flow)
    flow.refresh_from_db()
    assert (paused.status, flow.status, flow.pause_reason, flow.paused_at) == (
        "paused",
        "paused",
        "user",
        NOW,
    )
    resumed = process_flow_resume(organisation=org, actor=actor, now=NOW, flow=flow)
    flow.refresh_from_db()
    assert (resumed.status, flow.status, flow.pause_reason, flow.paused_at) == (
        "active",
        "active",
        "",
        None,
    )
    assert audit_actions(org) == ["process_flow.paused", "process_flow.resumed"]
    assert AuditEvent.objects.get(action="process_flow.resumed").changes == {
        "status": {"old": "paused", "new": "active"},
        "pause_reason": {"old": "user", "new": ""},
    }


def test_pausing_a_paused_flow_is_refused(org, subscription, production, actor):
    flow = ProcessFlowFactory(environment=production, name="Orders", paused="suspension")
    with pytest.raises(ServiceError) as refused:
        process_flow_pause(organisation=org, actor=actor, now=NOW, flow=flow)
    assert refused.value.message == "Orders is already paused (Account suspended)."
    flow.refresh_from_db()
    assert flow.pause_reason == "suspension"


def test_resuming_a_running_flow_is_refused(org, subscription, production, actor):
    flow = ProcessFlowFactory(environment=production, name="Orders")
    with pytest.raises(ServiceError) as refused:
        process_flow_resume(organisation=org, actor=actor, now=NOW, flow=flow)
    assert refused.value.message == "Orders is already running."


def test_resume_above_the_limit_is_refused(org, subscription, production, actor):
    ProcessFlowFactory.create_batch(10, environment=production)
    flow = ProcessFlowFactory(environment=production, name="Orders", paused="user")
    with pytest.raises(ServiceError) as refused:
        process_flow_resume(organisation=org, actor=actor, now=NOW, flow=flow)
    assert refused.value.message == (
        "Your Standard plan includes 10 active ProcessFlows and you have 10. "
        "Pause another ProcessFlow or upgrade your plan to resume Orders."
    )
    flow.refresh_from_db()
    assert (flow.status, flow.pause_reason) == ("paused", "user")
    assert audit_actions(org) == []


def test_flow_paused_for_the_plan_limit_resumes_by_hand_once_under_the_limit(
    org, subscription, production, actor
):
    ProcessFlowFactory.create_batch(9, environment=production)
    flow = ProcessFlowFactory(environment=production, paused="plan_limit")
    process_flow_resume(organisation=org, actor=actor, now=NOW, flow=flow)
    flow.refresh_from_db()
    assert flow.status == "active"


def test_flow_paused_for_suspension_resumes_only_with_the_payment(org, production, actor):
    SubscriptionFactory(organisation=org, status="suspended")
    flow = ProcessFlowFactory(environment=production, name="Orders", paused="suspension")
    with pytest.raises(ServiceError) as refused:
        process_flow_resume(organisation=org, actor=actor, now=NOW, flow=flow)
    assert refused.value.message == (
        "Orders was paused because your account is suspended. It resumes by itself once the "
        "payment succeeds: use Retry Payment in Settings > Billing > Payment Method."
    )
    flow.refresh_from_db()
    assert flow.pause_reason == "suspension"


def test_flow_stopped_at_cancellation_needs_a_plan_first(org, production, actor):
    SubscriptionFactory(organisation=org, status="ended")
    flow = ProcessFlowFactory(environment=production, name="Orders", paused="cancelled")
    with pytest.raises(ServiceError) as refused:
        process_flow_resume(organisation=org, actor=actor, now=NOW, flow=flow)
    assert refused.value.message == (
        "Orders stopped when your subscription ended. Choose a plan in Settings > Subscription "
        "to run it again."
    )


def test_user_paused_flow_cannot_resume_while_suspended(org, production, actor):
    SubscriptionFactory(organisation=org, status="suspended")
    flow = ProcessFlowFactory(environment=production, paused="user")
    with pytest.raises(ServiceError) as refused:
        process_flow_resume(organisation=org, actor=actor, now=NOW, flow=flow)
    assert refused.value.message == (
        "Your subscription is suspended because a payment failed. Use Retry Payment in "
        "Settings > Billing > Payment Method to resume ProcessFlows."
    )


def test_another_organisations_flow_cannot_be_paused(org, other_org, subscription, actor):
    theirs = ProcessFlowFactory(environment=EnvironmentFactory(organisation=other_org))
    with pytest.raises(ProcessFlow.DoesNotExist):
        process_flow_pause(organisation=org, actor=actor, now=NOW, flow=theirs)
    theirs.refresh_from_db()
    assert theirs.status == "active"


# Selectors -------------------------------------------------------------------------------


def test_usage_counts_in_one_query(
    org, other_org, subscription, production, django_assert_num_queries
):
    ConnectionFactory.create_batch(2, environment=production)
    ProcessFlowFactory.create_batch(3, environment=production)
    ProcessFlowFactory(environment=production, paused="user")
    ProcessFlowFactory(environment=EnvironmentFactory(organisation=other_org))
    with django_assert_num_queries(1):
        counts = usage_counts(organisation=org)
    assert counts == {
        "environments": 1,
        "connections": 2,
        "active_process_flows": 3,
        "process_flows": 4,
    }
    assert usage_counts(organisation=OrganisationFactory()) == {
        "environments": 0,
        "connections": 0,
        "active_process_flows": 0,
        "process_flows": 0,
    }


def test_plan_limits(org, subscription, other_org):
    limits = plan_limits(organisation=org)
    assert (
        limits.plan.code,
        limits.environments,
        limits.connections,
        limits.active_process_flows,
        limits.monthly_transactions,
    ) == ("standard", 1, 3, 10, 50_000)
    assert plan_limits(organisation=other_org) is None


# Races -----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("kind", ["environment", "process_flow"])
def test_concurrent_creations_stop_at_the_limit(kind):
    """The organisation row lock serialises the count-then-create of two requests at once."""
    org = OrganisationFactory()
    SubscriptionFactory(organisation=org)  # Standard: 1 environment, 10 active ProcessFlows
    if kind == "process_flow":
        production = EnvironmentFactory(organisation=org)
        ProcessFlowFactory.create_batch(9, environment=production)
        limit, model = 10, ProcessFlow
    else:
        limit, model = 1, Environment
    barrier = threading.Barrier(2)
    outcomes = []

    def create(name):
        try:
            barrier.wait()
            if kind == "process_flow":
                process_flow_create(
                    organisation=org,
                    actor=Actor(user=None),
                    now=NOW,
                    name=name,
                    environment=production,
                )
            else:
                environment_create(organisation=org, actor=Actor(user=None), now=NOW, name=name)
            outcomes.append("created")
        except ServiceError as error:
            outcomes.append(error.message)
        finally:
            db_connection.close()

    threads = [threading.Thread(target=create, args=(name,)) for name in ("First", "Second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("created") == 1
    [refusal] = [outcome for outcome in outcomes if outcome != "created"]
    assert refusal.startswith("Your Standard plan includes")
    assert model.objects.filter(organisation=org).count() == limit
