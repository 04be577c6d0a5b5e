"""API keys page: per-environment keys, shown once at creation, revocable; Admins only."""

import json
import re

import pytest
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import AuditEvent
from tests.subscriptions.factories import EnvironmentFactory, ProcessFlowFactory
from usage.models import ApiKey
from usage.services import api_key_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def production(org):
    return EnvironmentFactory(organisation=org, name="Production")


@pytest.fixture
def key(production, admin):
    key, _ = api_key_create(
        environment=production, actor=Actor(user=admin), name="Runtime A", now=timezone.now()
    )
    return key


def page(org):
    return f"/o/{org.slug}/settings/api-keys/"


def keys_state():
    return sorted(ApiKey.objects.values_list("pk", "name", "revoked_at", "key_hash"))


def call_api(client, plain):
    return client.get("/api/v1/flows", HTTP_AUTHORIZATION=f"Bearer {plain}")


def test_admin_sees_keys_per_environment_and_not_another_organisations(
    client_for, org, admin, production, key, other_org, outsider
):
    test_env = EnvironmentFactory(organisation=org, name="Test")
    api_key_create(
        environment=EnvironmentFactory(organisation=other_org),
        actor=Actor(user=outsider),
        name="Their key",
        now=timezone.now(),
    )
    response = client_for(admin).get(page(org))
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'<h2 id="env-[^"]+">Production</h2>', html)
    assert f'<h2 id="env-{test_env.public_id}">Test</h2>' in html
    assert "No keys for Test yet." in html
    assert "Runtime A" in html
    assert f"<code>{key.prefix}…</code>" in html
    assert '<span class="badge badge--ok">Active</span>' in html
    assert "Never" in html
    assert "Their key" not in html
    assert "Create key" in html


def test_without_environments_the_page_says_to_add_one(client_for, org, admin):
    html = client_for(admin).get(page(org)).content.decode()
    assert "No environments yet." in html


def test_create_shows_the_key_once_and_it_works(client, client_for, org, admin, production):
    ProcessFlowFactory(organisation=org, environment=production)
    response = client_for(admin).post(
        f"{page(org)}new/", {"environment": str(production.public_id), "name": "  Main   server "}
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "private, no-store"
    html = response.content.decode()
    plain = re.search(r"<output id=\"plain-key\"[^>]*>([^<]+)</output>", html).group(1)
    assert plain.startswith("ak_")
    assert "It is shown only this once" in html
    key = ApiKey.objects.get()
    assert (key.organisation, key.environment, key.name) == (org, production, "Main server")
    assert key.prefix == plain[:10]
    assert plain not in key.key_hash
    assert AuditEvent.objects.filter(organisation=org, action="api_key.created").count() == 1
    # Never again: the list shows the prefix only.
    listing = client.get(page(org)).content.decode()
    assert plain not in listing
    assert f"{key.prefix}…" in listing
    # The runtime can use it.
    client.logout()
    api = call_api(client, plain)
    assert api.status_code == 200
    assert len(json.loads(api.content)["flows"]) == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x"}, "This field is required."),
        (
            {"environment": "nope", "name": "x"},
            "Choose one of your organisation&#x27;s environments.",
        ),
        (
            {"environment": "THEIRS", "name": "x"},
            "Choose one of your organisation&#x27;s environments.",
        ),
        ({"environment": "OURS", "name": "   "}, "This field is required."),
        ({"environment": "OURS", "name": "x" * 81}, "Ensure this value has at most 80 characters"),
    ],
)
def test_bad_input_is_a_form_error_and_creates_nothing(
    client_for, org, admin, production, other_org, data, message
):
    replace = {
        "THEIRS": str(EnvironmentFactory(organisation=other_org).public_id),
        "OURS": str(production.public_id),
    }
    data = {name: replace.get(value, value) for name, value in data.items()}
    response = client_for(admin).post(f"{page(org)}new/", data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not ApiKey.objects.exists()
    assert not AuditEvent.objects.filter(action="api_key.created").exists()


def test_revoke_asks_first_then_revokes(client, client_for, org, admin, production):
    key, plain = api_key_create(
        environment=production, actor=Actor(user=admin), name="Old", now=timezone.now()
    )
    client = client_for(admin)
    confirm = client.get(f"{page(org)}{key.pk}/revoke/")
    assert confirm.status_code == 200
    assert "Revoke the key Old?" in confirm.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None

    response = client.post(f"{page(org)}{key.pk}/revoke/", follow=True)
    assert response.redirect_chain == [(page(org), 302)]
    html = response.content.decode()
    assert f"The key Old ({key.prefix}…) is revoked" in html
    assert '<span class="badge">Revoked</span>' in html
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditEvent.objects.filter(organisation=org, action="api_key.revoked").count() == 1
    client.logout()
    assert call_api(client, plain).status_code == 401

    again = client_for(admin).post(f"{page(org)}{key.pk}/revoke/", follow=True)
    assert "This key is already revoked." in again.content.decode()
    assert AuditEvent.objects.filter(organisation=org, action="api_key.revoked").count() == 1


def test_another_organisations_key_is_404(client_for, org, admin, other_org, outsider):
    theirs, _ = api_key_create(
        environment=EnvironmentFactory(organisation=other_org),
        actor=Actor(user=outsider),
        name="Theirs",
        now=timezone.now(),
    )
    before = keys_state()
    client = client_for(admin)
    assert client.get(f"{page(org)}{theirs.pk}/revoke/").status_code == 404
    assert client.post(f"{page(org)}{theirs.pk}/revoke/").status_code == 404
    assert client.post(f"{page(org)}999999999/revoke/").status_code == 404
    assert keys_state() == before


@pytest.mark.parametrize("role", ["member", "billing_user"])
def test_members_and_billing_contacts_get_403_and_change_nothing(
    client_for, org, production, key, request, role
):
    user = request.getfixturevalue(role)
    before = keys_state()
    client = client_for(user)
    assert client.get(page(org)).status_code == 403
    assert (
        client.post(
            f"{page(org)}new/", {"environment": str(production.public_id), "name": "x"}
        ).status_code
        == 403
    )
    assert client.get(f"{page(org)}{key.pk}/revoke/").status_code == 403
    assert client.post(f"{page(org)}{key.pk}/revoke/").status_code == 403
    assert keys_state() == before
