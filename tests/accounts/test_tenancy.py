"""Tenancy: a user of one organisation reaches nothing of another, by any organisation URL.

The URL list comes from the resolver, so a new organisation page is covered without anyone
remembering to add it; a URL with a parameter this test does not know fails the test.
The public SAML endpoints under /sso/<organisation_slug>/ are not organisation pages (no
membership needed): tests/sso covers them.
"""

import re
import uuid

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.models import Organisation
from tests.accounts.factories import MembershipFactory
from tests.accounts.tenancy_objects import organisation_objects, snapshot
from tests.subscriptions.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

PARAM = re.compile(r"<(?:\w+:)?(\w+)>")
KNOWN_PARAMS = {
    "org_slug",
    "member_id",
    "invitation_id",
    "flow_id",
    "invoice_number",
    "plan_code",
    "key_id",
    "threshold_id",
    "domain_id",
    "document_id",
    "ticket_id",
    "attachment_id",
    "credit_note_number",
    "recipient_id",
    "month",
}


def organisation_routes():
    """Every URL pattern under /o/<org_slug>/, as a route template with <param> holes."""

    def walk(patterns, prefix):
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                yield from walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern):
                yield route

    return sorted({r for r in walk(get_resolver().url_patterns, "") if "<slug:org_slug>" in r})


def fill(route, values):
    params = PARAM.findall(route)
    unknown = set(params) - KNOWN_PARAMS
    assert not unknown, f"{route}: teach test_tenancy about {unknown}"
    return "/" + PARAM.sub(lambda m: str(values[m.group(1)]), route)


@pytest.fixture
def victim(org, admin, member):
    """Organisation A with a member, a pending invitation and a running ProcessFlow."""
    SubscriptionFactory(organisation=org)
    return organisation_objects(
        org, member=member, invoice_number="INV-2026-000101", domain="acme.test"
    )


def test_the_route_list_is_not_empty():
    routes = organisation_routes()
    assert "o/<slug:org_slug>/settings/users/<uuid:member_id>/remove/" in routes
    assert len(routes) >= 15


@pytest.mark.parametrize("method", ["get", "post"])
def test_another_organisations_admin_gets_404_on_every_organisation_url(
    client_for, org, victim, outsider, method
):
    before = snapshot(org)
    client = client_for(outsider)
    for route in organisation_routes():
        url = fill(route, victim)
        response = getattr(client, method)(
            url,
            {
                "role": "member",
                "name": "Hacked",
                "email": "x@evil.test",
                "new_email": "x@evil.test",
            },
        )
        assert response.status_code == 404, f"{method.upper()} {url} gave {response.status_code}"
    assert snapshot(org) == before


@pytest.mark.parametrize("method", ["get", "post"])
def test_own_organisation_url_with_another_organisations_object_ids_is_404(
    client_for, org, other_org, outsider, admin, method
):
    theirs = {
        **organisation_objects(
            other_org, member=outsider, invoice_number="INV-2026-000202", domain="globex.test"
        ),
        "org_slug": org.slug,  # the attacker's own organisation in the URL, B's objects
    }
    MembershipFactory(organisation=other_org, role="member")
    before = snapshot(other_org)
    client = client_for(admin)
    object_routes = [r for r in organisation_routes() if "_id>" in r or "_number>" in r]
    assert object_routes
    unknown = {
        **theirs,
        "member_id": uuid.uuid4(),
        "invitation_id": uuid.uuid4(),
        "flow_id": uuid.uuid4(),
        "invoice_number": "INV-2026-999999",
        "key_id": 2_000_000_000,
        "threshold_id": uuid.uuid4(),
        "domain_id": uuid.uuid4(),
        "document_id": 2_000_000_000,
        "ticket_id": uuid.uuid4(),
        "attachment_id": uuid.uuid4(),
        "recipient_id": uuid.uuid4(),
    }
    for route in object_routes:
        url = fill(route, theirs)
        response = getattr(client, method)(url, {"role": "member"})
        # A GET on a POST-only action (or a POST on a GET-only page) is 405 whatever the id,
        # so it reveals nothing either.
        allowed = {404, 405}
        assert response.status_code in allowed, f"{method.upper()} {url}: {response.status_code}"
        same_as_unknown = getattr(client, method)(fill(route, unknown), {"role": "member"})
        assert response.status_code == same_as_unknown.status_code, url
    assert snapshot(other_org) == before


def test_anonymous_visitors_are_sent_to_sign_in_for_every_organisation_url(client, victim):
    for route in organisation_routes():
        url = fill(route, victim)
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/"), url


def test_deleted_organisation_is_404_for_its_own_members(client_for, admin, org):
    Organisation.objects.filter(pk=org.pk).update(status="deleted")
    assert client_for(admin).get(f"/o/{org.slug}/").status_code == 404
