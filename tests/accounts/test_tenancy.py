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

from accounts.models import AuditEvent, Invitation, Membership, Organisation
from billing.models import InvoiceDocument
from sso.models import SsoDomain
from subscriptions.models import Connection, Environment, ProcessFlow
from support.models import SupportTicket, TicketAttachment, TicketMessage
from tests.billing.pdf_factories import issued_invoice
from tests.factories import InvitationFactory, MembershipFactory
from tests.subscriptions.factories import ProcessFlowFactory, SubscriptionFactory
from usage.models import ApiKey

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
    "domain_id",
    "document_id",
    "ticket_id",
    "attachment_id",
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
    invitation = InvitationFactory(organisation=org)
    SubscriptionFactory(organisation=org)
    flow = ProcessFlowFactory(environment__organisation=org)
    return {
        "org_slug": org.slug,
        "member_id": Membership.objects.get(user=member).public_id,
        "invitation_id": invitation.public_id,
        "flow_id": flow.public_id,
        "plan_code": "standard",
        "key_id": api_key_of(org).pk,
        "domain_id": SsoDomain.objects.create(organisation=org, domain="acme.test").public_id,
        **billing_and_support_objects(org, "INV-2026-000101"),
    }


def billing_and_support_objects(organisation, number):
    """An invoice with a revised copy, and a support ticket with an attached file."""
    invoice = issued_invoice(organisation=organisation, number=number)
    document = InvoiceDocument.objects.create(invoice=invoice, kind="revised", pdf=b"%PDF-1.7")
    ticket = SupportTicket.objects.create(
        organisation=organisation,
        category="billing",
        subject="Help",
        contact_email="someone@company.test",
        organisation_name=organisation.name,
    )
    message = TicketMessage.objects.create(
        ticket=ticket, organisation=organisation, author_kind="customer", body="Hello"
    )
    attachment = TicketAttachment.objects.create(
        message=message,
        organisation=organisation,
        filename="a.txt",
        content_type="text/plain",
        size=2,
        data=b"hi",
    )
    return {
        "invoice_number": invoice.number,
        "document_id": document.pk,
        "ticket_id": ticket.public_id,
        "attachment_id": attachment.public_id,
    }


def api_key_of(organisation):
    """An API key of `organisation` (usage:api_key_revoke takes its integer id)."""
    environment = ProcessFlowFactory(environment__organisation=organisation).environment
    return ApiKey.objects.create(
        organisation=organisation,
        environment=environment,
        name="Runtime",
        prefix="ak_test",
        key_hash=uuid.uuid4().hex,
    )


def snapshot(org):
    return (
        Organisation.objects.filter(pk=org.pk)
        .values_list("name", "primary_email", "time_zone")
        .get(),
        sorted(
            Membership.objects.filter(organisation=org).values_list("user_id", "role", "status")
        ),
        sorted(
            Invitation.objects.filter(organisation=org).values_list("email", "status", "token_hash")
        ),
        AuditEvent.objects.filter(organisation=org).count(),
        Environment.objects.filter(organisation=org).count(),
        Connection.objects.filter(organisation=org).count(),
        sorted(ProcessFlow.objects.filter(organisation=org).values_list("public_id", "status")),
        sorted(ApiKey.objects.filter(organisation=org).values_list("pk", "name", "revoked_at")),
        sorted(SsoDomain.objects.filter(organisation=org).values_list("domain", flat=True)),
        sorted(SupportTicket.objects.filter(organisation=org).values_list("subject", "status")),
        TicketMessage.objects.filter(organisation=org).count(),
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
        "org_slug": org.slug,  # the attacker's own organisation in the URL ...
        "member_id": Membership.objects.get(user=outsider).public_id,  # ... B's objects
        "invitation_id": InvitationFactory(organisation=other_org).public_id,
        "flow_id": ProcessFlowFactory(environment__organisation=other_org).public_id,
        "plan_code": "standard",
        "key_id": api_key_of(other_org).pk,
        "domain_id": SsoDomain.objects.create(
            organisation=other_org, domain="globex.test"
        ).public_id,
        **billing_and_support_objects(other_org, "INV-2026-000202"),
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
        "domain_id": uuid.uuid4(),
        "document_id": 2_000_000_000,
        "ticket_id": uuid.uuid4(),
        "attachment_id": uuid.uuid4(),
    }
    for route in object_routes:
        url = fill(route, theirs)
        response = getattr(client, method)(url, {"role": "member"})
        # A GET on a POST-only action is 405 whatever the id, so it reveals nothing either.
        allowed = {404, 405} if method == "get" else {404}
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
