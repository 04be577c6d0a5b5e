"""Configuration export (docs/architecture.md#decision-data-retention-and-exports): content,
secrets removed, who may download it, the ops admin action, and the cancellation panel's
countdown."""

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.admin.sites import site
from django.urls import reverse

from accounts.models import Organisation
from retention.admin_export import download_configuration_export
from retention.export import REMOVED, configuration_export, secrets_removed
from tests.subscriptions.factories import (
    ConnectionFactory,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 20, 23, 30, tzinfo=UTC)


@pytest.fixture
def configured(org):
    org.time_zone = "Europe/Berlin"  # 21 December there at NOW
    org.save(update_fields=["time_zone"])
    env = EnvironmentFactory(organisation=org, name="Production", created_at=NOW)
    erp = ConnectionFactory(
        environment=env,
        name="ERP",
        application="SAP Business One",
        created_at=NOW,
        config={
            "url": "https://erp.acme.test",
            "password": "hunter2",
            "auth": {"clientSecret": "s3cr3t", "client_id": "acme", "API_KEY": "k"},
            "headers": [{"name": "X-Trace", "token": "t0k"}],
        },
    )
    crm = ConnectionFactory(environment=env, name="CRM", created_at=NOW)
    flow = ProcessFlowFactory(
        environment=env,
        name="Orders to ERP",
        source=crm,
        target=erp,
        created_at=NOW,
        config={"schedule": "*/5 * * * *", "credentials": {"user": "svc"}},
        paused="cancelled",
    )
    return env, erp, crm, flow


def test_secrets_are_removed_at_any_depth():
    cleaned, removed = secrets_removed(
        {
            "Password": "x",
            "nested": {"list": [{"access_token": "y", "keep": 1}], "passwd": "z"},
            "privateKey": "-----BEGIN",
            "name": "kept",
            "credential_ref": {"deep": "gone"},
        }
    )
    assert cleaned == {
        "Password": REMOVED,
        "nested": {"list": [{"access_token": REMOVED, "keep": 1}], "passwd": REMOVED},
        "privateKey": REMOVED,
        "name": "kept",
        "credential_ref": REMOVED,
    }
    assert removed == 5


def test_the_export_holds_every_flow_connection_and_environment(org, configured, other_org):
    env, erp, crm, flow = configured
    ProcessFlowFactory(environment=EnvironmentFactory(organisation=other_org), name="Theirs")

    document = configuration_export(organisation=org, now=NOW)

    assert document == {
        "format": "configuration-export",
        "version": 1,
        "organisation": {"name": "Acme Trading", "slug": "acme"},
        "exported_at": "2026-12-20T23:30:00+00:00",
        "environments": [
            {"public_id": str(env.public_id), "name": "Production", "created_at": NOW.isoformat()}
        ],
        "connections": [
            {
                "public_id": str(erp.public_id),
                "name": "ERP",
                "application": "SAP Business One",
                "environment": str(env.public_id),
                "config": {
                    "url": "https://erp.acme.test",
                    "password": REMOVED,
                    "auth": {"clientSecret": REMOVED, "client_id": "acme", "API_KEY": REMOVED},
                    "headers": [{"name": "X-Trace", "token": REMOVED}],
                },
                "created_at": NOW.isoformat(),
            },
            {
                "public_id": str(crm.public_id),
                "name": "CRM",
                "application": "Salesforce",
                "environment": str(env.public_id),
                "config": {},
                "created_at": NOW.isoformat(),
            },
        ],
        "process_flows": [
            {
                "public_id": str(flow.public_id),
                "name": "Orders to ERP",
                "environment": str(env.public_id),
                "source": str(crm.public_id),
                "target": str(erp.public_id),
                "status": "paused",
                "pause_reason": "cancelled",
                "paused_at": "2026-11-01T09:00:00+00:00",
                "config": {"schedule": "*/5 * * * *", "credentials": REMOVED},
                "created_at": NOW.isoformat(),
            }
        ],
        "secrets_removed": 5,
    }
    assert "hunter2" not in json.dumps(document)


def export_url(org):
    return reverse("retention:configuration_export", args=[org.slug])


def test_an_admin_downloads_it_as_an_attachment(org, admin, configured, client_for):
    with time_machine.travel(NOW, tick=False):
        response = client_for(admin).get(export_url(org))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert (
        response["Content-Disposition"]
        == 'attachment; filename="configuration-acme-2026-12-21.json"'
    )
    document = json.loads(response.content)
    assert [f["name"] for f in document["process_flows"]] == ["Orders to ERP"]
    assert document["connections"][0]["config"]["password"] == REMOVED


def test_it_stays_downloadable_once_the_subscription_ended(org, admin, configured, client_for):
    SubscriptionFactory(organisation=org, status="ended", ended_at=NOW - timedelta(days=3))
    assert client_for(admin).get(export_url(org)).status_code == 200


@pytest.mark.parametrize("role", ["member", "billing_user"])
def test_members_and_billing_contacts_get_403(org, configured, client_for, request, role):
    user = request.getfixturevalue(role)
    response = client_for(user).get(export_url(org))
    assert response.status_code == 403
    assert b"Production" not in response.content


def test_another_organisations_export_is_a_404(org, configured, outsider, client_for):
    response = client_for(outsider).get(export_url(org))
    assert response.status_code == 404
    assert b"ERP" not in response.content


def test_post_is_not_allowed(org, admin, configured, client_for):
    assert client_for(admin).post(export_url(org)).status_code == 405


# Ops: the admin action ------------------------------------------------------------------


@pytest.fixture
def ops(db):
    from accounts.models import User

    return User.objects.create_superuser("ops@example.test", "ops-pass-2026")


def run_action(client, organisations):
    return client.post(
        reverse("admin:accounts_organisation_changelist"),
        {
            "action": "download_configuration_export",
            "_selected_action": [o.pk for o in organisations],
        },
    )


def test_ops_download_one_organisations_export(org, configured, ops, client_for):
    # portal.admin composes accounts' OrganisationAdmin with retention's action.
    assert download_configuration_export in site._registry[Organisation].actions
    response = run_action(client_for(ops), [org])
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith('attachment; filename="configuration-acme-')
    assert json.loads(response.content)["organisation"] == {"name": "Acme Trading", "slug": "acme"}


def test_ops_must_select_exactly_one(org, other_org, ops, client_for):
    client = client_for(ops)
    response = run_action(client, [org, other_org])
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "Select exactly one organisation to export." in page


# The cancellation panel: countdown and export links --------------------------------------


def test_the_ended_panel_shows_the_countdown_and_the_exports(org, admin, client_for):
    SubscriptionFactory(
        organisation=org,
        status="ended",
        ended_at=datetime(2026, 12, 1, 9, 5, tzinfo=UTC),
    )
    with time_machine.travel(datetime(2026, 12, 19, 10, 0, tzinfo=UTC), tick=False):
        page = client_for(admin).get(reverse("subscriptions:settings", args=["acme"]))
    html = page.content.decode()
    assert "Data will be deleted on" in html
    assert '<span class="deletion-countdown">in 12 days</span>' in html
    assert f'href="{export_url(org)}">Configuration export</a>' in html
    assert f'href="{reverse("usage:sync_info_export", args=["acme"])}">Sync Info export</a>' in html


def test_the_cancelled_panel_shows_the_countdown_billing_sees_no_config_link(
    org, billing_user, client_for
):
    SubscriptionFactory(
        organisation=org, cancel_at_period_end=True, canceled_at=datetime(2026, 11, 20, tzinfo=UTC)
    )
    # The period ends 1 December 2026 09:00 UTC; deletion 31 December.
    with time_machine.travel(datetime(2026, 11, 30, 10, 0, tzinfo=UTC), tick=False):
        page = client_for(billing_user).get(reverse("subscriptions:settings", args=["acme"]))
    html = page.content.decode()
    assert '<span class="deletion-countdown">in 31 days</span>' in html
    assert "Configuration export" not in html
    assert "Sync Info export" in html
