"""The ProcessFlows page: everyone sees it, only Admins change anything."""

import uuid

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import AuditEvent
from subscriptions.models import Connection, Environment, ProcessFlow
from tests.subscriptions.factories import (
    ConnectionFactory,
    EnvironmentFactory,
    ProcessFlowFactory,
)

pytestmark = pytest.mark.django_db


def url(name, org, *args):
    return reverse(f"subscriptions:{name}", args=[org.slug, *args])


def state(org):
    return (
        sorted(Environment.objects.filter(organisation=org).values_list("name", flat=True)),
        sorted(Connection.objects.filter(organisation=org).values_list("name", flat=True)),
        sorted(
            ProcessFlow.objects.filter(organisation=org).values_list(
                "name", "status", "pause_reason"
            )
        ),
        AuditEvent.objects.filter(organisation=org).count(),
    )


@pytest.fixture
def orders(production):
    crm = ConnectionFactory(environment=production, name="CRM", application="Salesforce")
    erp = ConnectionFactory(environment=production, name="ERP", application="SAP Business One")
    return ProcessFlowFactory(environment=production, name="Orders to ERP", source=crm, target=erp)


# Seeing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "billing_user", "member"])
def test_every_role_sees_the_page_in_the_top_navigation(
    request, client_for, org, subscription, orders, role
):
    response = client_for(request.getfixturevalue(role)).get(url("flows", org))
    assert response.status_code == 200
    body = response.content.decode()
    assert f'href="{url("flows", org)}" aria-current="page">ProcessFlows</a>' in body
    assert "Orders to ERP" in body
    assert "CRM → ERP" in body
    assert "SAP Business One" in body
    assert "<strong>1</strong> of 10 active ProcessFlows" in body
    assert "<strong>2</strong> of 3 integrations" in body
    assert "<strong>1</strong> of 1 environment" in body


def test_member_sees_no_forms_or_buttons(client_for, org, subscription, orders, member):
    body = client_for(member).get(url("flows", org)).content.decode()
    assert "New ProcessFlow" not in body
    assert url("flow_pause", org, orders.public_id) not in body
    assert url("environment_create", org) not in body


def test_admin_sees_the_forms_and_the_pause_button(client_for, org, professional, orders, admin):
    body = client_for(admin).get(url("flows", org)).content.decode()
    assert url("flow_pause", org, orders.public_id) in body
    for name in ("flow_create", "connection_create", "environment_create"):
        assert url(name, org) in body


def test_pause_reason_is_shown(client_for, org, subscription, production, member):
    ProcessFlowFactory(environment=production, name="Invoices", paused="plan_limit")
    body = client_for(member).get(url("flows", org)).content.decode()
    assert "Paused</span>" in body
    assert "Above the plan limit" in body


def test_an_empty_organisation_gets_started_with_an_environment(
    client_for, org, subscription, admin, member
):
    body = client_for(admin).get(url("flows", org)).content.decode()
    assert "Get started" in body
    assert "<strong>Add an environment</strong>" in body
    # Only the environment form is offered until there is an environment.
    assert url("environment_create", org) in body
    assert url("connection_create", org) not in body
    assert url("flow_create", org) not in body
    member_body = client_for(member).get(url("flows", org)).content.decode()
    assert "No ProcessFlows yet. An Admin of Acme Trading sets them up." in member_body
    assert url("environment_create", org) not in member_body


def test_empty_sections_say_what_comes_next(client_for, org, subscription, production, admin):
    body = client_for(admin).get(url("flows", org)).content.decode()
    assert "No ProcessFlows yet." in body
    assert "No connections yet." in body
    assert "the connections to your apps</a>, then create a ProcessFlow." in body
    assert url("connection_create", org) in body
    assert url("flow_create", org) in body


def test_blank_environment_name_shows_the_error_in_get_started(
    client_for, org, subscription, admin
):
    response = client_for(admin).post(url("environment_create", org), {"environment-name": " "})
    assert response.status_code == 400
    body = response.content.decode()
    assert "Get started" in body
    assert "This field is required." in body
    assert not Environment.objects.exists()


def test_without_a_subscription_the_page_says_to_choose_a_plan(client_for, org, admin, member):
    body = client_for(admin).get(url("flows", org)).content.decode()
    assert "has no subscription yet, so no ProcessFlow can run" in body
    assert (
        "Your organisation has no subscription yet. Choose a plan in Settings &gt; Subscription "
        "to add environments."
    ) in body
    assert url("environment_create", org) not in body
    member_body = client_for(member).get(url("flows", org)).content.decode()
    assert "An Admin can choose a plan." in member_body


def test_at_the_limit_the_form_is_replaced_by_the_reason(
    client_for, org, subscription, production, admin
):
    body = client_for(admin).get(url("flows", org)).content.decode()
    assert (
        "Your Standard plan includes 1 environment and you have 1. Upgrade your plan to add more."
        in body
    )
    assert url("environment_create", org) not in body
    assert url("connection_create", org) in body


def test_page_runs_a_constant_number_of_queries(client_for, org, professional, production, admin):
    client = client_for(admin)
    crm = ConnectionFactory(environment=production)
    ProcessFlowFactory(environment=production)
    client.get(url("flows", org))
    with CaptureQueriesContext(db_connection) as few:
        assert client.get(url("flows", org)).status_code == 200
    expected = len(few.captured_queries)
    # Still below every Professional limit, so the same forms show.
    for _ in range(5):
        erp = ConnectionFactory(environment=production)
        ProcessFlowFactory(environment=production, source=crm, target=erp)
        ProcessFlowFactory(environment=production, paused="user")
    with CaptureQueriesContext(db_connection) as many:
        assert client.get(url("flows", org)).status_code == 200
    assert len(many.captured_queries) == expected


# Changing --------------------------------------------------------------------------------


def test_admin_creates_an_environment(client_for, org, subscription, admin):
    response = client_for(admin).post(
        url("environment_create", org), {"environment-name": "Production"}, follow=True
    )
    assert response.redirect_chain == [(url("flows", org), 302)]
    assert "Environment Production added." in response.content.decode()
    assert Environment.objects.get(organisation=org).name == "Production"


def test_environment_above_the_limit_is_a_form_error(
    client_for, org, subscription, production, admin
):
    before = state(org)
    response = client_for(admin).post(url("environment_create", org), {"environment-name": "Test"})
    assert response.status_code == 400
    assert (
        "Your Standard plan includes 1 environment and you have 1. Upgrade your plan to add more."
        in response.content.decode()
    )
    assert state(org) == before


def test_admin_creates_a_connection(client_for, org, subscription, production, admin):
    response = client_for(admin).post(
        url("connection_create", org),
        {
            "connection-name": "CRM",
            "connection-application": "Salesforce",
            "connection-environment": str(production.public_id),
        },
    )
    assert response.status_code == 302
    created = Connection.objects.get(organisation=org)
    assert (created.name, created.application, created.environment) == (
        "CRM",
        "Salesforce",
        production,
    )


@pytest.mark.parametrize("tampered", ["theirs", "unknown", "not-a-uuid"])
def test_connection_with_a_tampered_environment_is_a_form_error(
    client_for, org, other_org, subscription, production, admin, tampered
):
    theirs = EnvironmentFactory(organisation=other_org, name="Their production")
    value = {"theirs": theirs.public_id, "unknown": uuid.uuid4(), "not-a-uuid": "1"}[tampered]
    before, theirs_before = state(org), state(other_org)
    response = client_for(admin).post(
        url("connection_create", org),
        {
            "connection-name": "CRM",
            "connection-application": "Salesforce",
            "connection-environment": str(value),
        },
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert "Choose one of your organisation&#x27;s environments." in body
    assert "Their production" not in body
    assert state(org) == before
    assert state(other_org) == theirs_before


def test_admin_creates_a_process_flow(client_for, org, subscription, production, admin):
    crm = ConnectionFactory(environment=production)
    response = client_for(admin).post(
        url("flow_create", org),
        {
            "flow-name": "Orders",
            "flow-environment": str(production.public_id),
            "flow-source": str(crm.public_id),
            "flow-target": "",
        },
        follow=True,
    )
    assert "ProcessFlow Orders added and running." in response.content.decode()
    flow = ProcessFlow.objects.get(organisation=org)
    assert (flow.name, flow.source, flow.target, flow.status) == ("Orders", crm, None, "active")


def test_process_flow_with_another_organisations_connection_is_a_form_error(
    client_for, org, other_org, subscription, production, admin
):
    theirs = ConnectionFactory(environment=EnvironmentFactory(organisation=other_org))
    before = state(org)
    response = client_for(admin).post(
        url("flow_create", org),
        {
            "flow-name": "Orders",
            "flow-environment": str(production.public_id),
            "flow-source": str(theirs.public_id),
        },
    )
    assert response.status_code == 400
    assert "Choose one of your organisation&#x27;s connections." in response.content.decode()
    assert state(org) == before


def test_service_refusal_lands_on_its_field(client_for, org, professional, production, admin):
    other_env = EnvironmentFactory(organisation=org, name="Test")
    sandbox = ConnectionFactory(environment=other_env, name="Sandbox")
    response = client_for(admin).post(
        url("flow_create", org),
        {
            "flow-name": "Orders",
            "flow-environment": str(production.public_id),
            "flow-target": str(sandbox.public_id),
        },
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert "Sandbox is in the environment Test." in body
    assert '<details class="card add-form" id="new-flow" open>' in body
    assert not ProcessFlow.objects.exists()


def test_admin_pauses_and_resumes(client_for, org, subscription, orders, admin):
    client = client_for(admin)
    response = client.post(url("flow_pause", org, orders.public_id), follow=True)
    assert "Orders to ERP is paused." in response.content.decode()
    orders.refresh_from_db()
    assert (orders.status, orders.pause_reason) == ("paused", "user")
    assert url("flow_resume", org, orders.public_id) in response.content.decode()
    response = client.post(url("flow_resume", org, orders.public_id), follow=True)
    assert "Orders to ERP is running again." in response.content.decode()
    orders.refresh_from_db()
    assert orders.status == "active"


def test_resume_above_the_limit_shows_why(client_for, org, subscription, production, admin):
    ProcessFlowFactory.create_batch(10, environment=production)
    flow = ProcessFlowFactory(environment=production, name="Orders", paused="user")
    before = state(org)
    response = client_for(admin).post(url("flow_resume", org, flow.public_id), follow=True)
    assert (
        "Your Standard plan includes 10 active ProcessFlows and you have 10. Pause another "
        "ProcessFlow or upgrade your plan to resume Orders." in response.content.decode()
    )
    assert state(org) == before


@pytest.mark.parametrize("role", ["member", "billing_user"])
def test_only_admins_change_anything(request, client_for, org, subscription, orders, role):
    client = client_for(request.getfixturevalue(role))
    before = state(org)
    posts = [
        (url("environment_create", org), {"environment-name": "Test"}),
        (
            url("connection_create", org),
            {
                "connection-name": "X",
                "connection-application": "Y",
                "connection-environment": str(orders.environment.public_id),
            },
        ),
        (
            url("flow_create", org),
            {"flow-name": "X", "flow-environment": str(orders.environment.public_id)},
        ),
        (url("flow_pause", org, orders.public_id), {}),
        (url("flow_resume", org, orders.public_id), {}),
    ]
    for target, data in posts:
        assert client.post(target, data).status_code == 403, target
    assert state(org) == before


def test_actions_are_post_only(client_for, org, subscription, orders, admin):
    client = client_for(admin)
    assert client.get(url("flow_pause", org, orders.public_id)).status_code == 405
    assert client.get(url("environment_create", org)).status_code == 405
    orders.refresh_from_db()
    assert orders.status == "active"


def test_another_organisations_flow_is_404(client_for, org, other_org, subscription, admin):
    theirs = ProcessFlowFactory(environment=EnvironmentFactory(organisation=other_org))
    client = client_for(admin)
    assert client.post(url("flow_pause", org, theirs.public_id)).status_code == 404
    assert client.post(url("flow_resume", org, uuid.uuid4())).status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == "active"
