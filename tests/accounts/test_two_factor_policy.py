"""The organisation's two-factor policy: who sets it, the gate on its pages, invitations, the
Users page (docs/architecture.md#decision-two-factor-policy-gate)."""

from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import AuditEvent, Membership, Organisation, OutgoingEmail, User
from accounts.tenancy import SSO_SESSION_KEY
from accounts.two_factor_policy import organisation_two_factor_policy_set
from core.errors import ServiceError
from devkit.saml_idp import TestIdP
from sso.configuration import configuration_for, idp_configure
from sso.domains import domain_add
from sso.enforcement import enforcement_set
from sso.models import SsoConfiguration
from tests.accounts.factories import InvitationFactory, MembershipFactory
from tests.accounts.test_page_frame import tables
from tests.helpers import sync_info_post
from tests.sso.helpers import SsoBrowser
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
    plan,
)
from usage.services import api_key_create

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
OFF, ADMINS_AND_BILLING, EVERYONE = "off", "admins_and_billing", "everyone"
POLICY_URL = "/o/acme/settings/organisation/two-factor/"
OVERVIEW = "/o/acme/"


def with_totp(user):
    TOTP.activate(user, generate_totp_secret())
    return user


def set_policy(org, policy):
    Organisation.objects.filter(pk=org.pk).update(two_factor_policy=policy)
    org.refresh_from_db()


def to_security(next_url):
    return f"{reverse('accounts:security')}?{urlencode({'next': next_url})}"


def messages_of(response):
    return [str(message) for message in get_messages(response.wsgi_request)]


def nothing_written(org, policy=OFF):
    org.refresh_from_db()
    assert org.two_factor_policy == policy
    assert not AuditEvent.objects.filter(organisation=org, action="organisation.updated").exists()
    assert not OutgoingEmail.objects.filter(template="two_factor_policy_changed").exists()


# Setting the policy ----------------------------------------------------------------------


def test_the_policy_is_off_by_default(org):
    assert org.two_factor_policy == OFF


def test_an_admin_with_a_second_factor_requires_it_and_the_admins_are_told(
    client_for, org, admin, billing_user, member, committed
):
    with_totp(admin)
    other_admin = MembershipFactory(organisation=org, role="admin").user
    MembershipFactory(organisation=org, role="admin", status="deactivated")
    client = client_for(admin)
    with committed():
        response = client.post(POLICY_URL, {"policy": ADMINS_AND_BILLING})

    assert response.status_code == 302
    assert response["Location"] == "/o/acme/settings/organisation/"
    org.refresh_from_db()
    assert org.two_factor_policy == ADMINS_AND_BILLING
    event = AuditEvent.objects.get(organisation=org, action="organisation.updated")
    assert event.actor == admin
    assert event.changes == {"two_factor_policy": {"old": OFF, "new": ADMINS_AND_BILLING}}
    emails = OutgoingEmail.objects.filter(template="two_factor_policy_changed")
    assert sorted(emails.values_list("to_email", flat=True)) == sorted(
        [admin.email, other_admin.email]
    )
    email = emails.first()
    assert email.subject == "Two-factor sign-in policy of Acme Trading changed"
    assert "Require two-factor sign-in for Admins and Billing contacts" in email.body_text
    assert admin.email in email.body_text
    page = client.get(response["Location"])
    assert "Two-factor sign-in: Require two-factor sign-in for Admins and Billing contacts." in (
        messages_of(page)
    )


def test_choosing_the_same_policy_twice_changes_and_tells_once(client_for, org, admin):
    with_totp(admin)
    client = client_for(admin)
    for _ in range(2):
        assert client.post(POLICY_URL, {"policy": EVERYONE}).status_code == 302
    org.refresh_from_db()
    assert org.two_factor_policy == EVERYONE
    assert AuditEvent.objects.filter(organisation=org, action="organisation.updated").count() == 1
    assert OutgoingEmail.objects.filter(template="two_factor_policy_changed").count() == 1


def test_enabling_without_an_own_second_factor_is_refused_and_nothing_changes(
    client_for, org, admin
):
    response = client_for(admin).post(POLICY_URL, {"policy": EVERYONE})

    assert response.status_code == 400
    body = response.content.decode()
    assert "Set up two-factor sign-in for your own account first" in body
    assert 'href="/account/security/?next=' in body
    nothing_written(org)


def test_recovery_codes_alone_are_not_a_second_factor(client_for, org, admin):
    RecoveryCodes.activate(admin)
    response = client_for(admin).post(POLICY_URL, {"policy": EVERYONE})
    assert response.status_code == 400
    nothing_written(org)


def test_weakening_or_turning_off_also_needs_the_actors_second_factor(org, admin):
    set_policy(org, EVERYONE)
    for weaker in (ADMINS_AND_BILLING, OFF):
        with pytest.raises(ServiceError) as refused:
            organisation_two_factor_policy_set(
                organisation=org, actor=Actor(user=admin), policy=weaker, now=NOW
            )
        assert refused.value.code == "own_second_factor_required"
    nothing_written(org, policy=EVERYONE)


def test_an_admin_signed_in_through_the_idp_without_a_second_factor_cannot_turn_it_off(
    client, org, admin
):
    set_policy(org, EVERYONE)
    client.force_login(admin)
    session = client.session
    session[SSO_SESSION_KEY] = org.pk
    session.save()
    response = client.post(POLICY_URL, {"policy": OFF})
    assert response.status_code == 400
    nothing_written(org, policy=EVERYONE)


def test_a_bad_choice_is_a_form_error(client_for, org, admin):
    with_totp(admin)
    response = client_for(admin).post(POLICY_URL, {"policy": "sometimes"})
    assert response.status_code == 400
    assert "Choose one of the two-factor options." in response.content.decode()
    nothing_written(org)


def test_a_bad_choice_is_refused_by_the_service_too(org, admin):
    with_totp(admin)
    with pytest.raises(ServiceError, match="Choose one of the two-factor options."):
        organisation_two_factor_policy_set(
            organisation=org, actor=Actor(user=admin), policy="sometimes", now=NOW
        )
    nothing_written(org)


@pytest.mark.parametrize("role", ["billing", "member"])
def test_only_admins_may_change_it(client_for, org, role):
    user = with_totp(MembershipFactory(organisation=org, role=role).user)
    response = client_for(user).post(POLICY_URL, {"policy": EVERYONE})
    assert response.status_code == 403
    nothing_written(org)


def test_another_organisations_admin_gets_404(client_for, org, outsider):
    with_totp(outsider)
    assert client_for(outsider).post(POLICY_URL, {"policy": EVERYONE}).status_code == 404
    nothing_written(org)


def test_the_form_shows_who_in_scope_lacks_it(client_for, org, admin, billing_user, member):
    with_totp(admin)
    with_totp(MembershipFactory(organisation=org, role="member").user)
    MembershipFactory(organisation=org, role="billing", status="deactivated")
    body = client_for(admin).get("/o/acme/settings/organisation/").content.decode()
    # Lacking: the Billing contact (Admins and Billing); the Billing contact and one Member.
    assert "Admins and Billing contacts without it yet: <strong>1</strong>" in body
    assert "Everyone without it yet: <strong>2</strong>" in body
    assert 'value="off" required id="id_policy_0" checked' in body
    assert "You use two-factor sign-in, so you can change this policy." in body


# The gate --------------------------------------------------------------------------------

IN_SCOPE = {
    OFF: set(),
    ADMINS_AND_BILLING: {"admin", "billing"},
    EVERYONE: {"admin", "billing", "member"},
}


@pytest.mark.parametrize("policy", [OFF, ADMINS_AND_BILLING, EVERYONE])
@pytest.mark.parametrize("role", ["admin", "billing", "member"])
def test_people_in_scope_without_a_second_factor_are_sent_to_set_it_up(
    client_for, org, policy, role
):
    set_policy(org, policy)
    user = MembershipFactory(organisation=org, role=role).user
    client = client_for(user)
    response = client.get(OVERVIEW)

    if role in IN_SCOPE[policy]:
        assert response.status_code == 302
        assert response["Location"] == to_security(OVERVIEW)
        scope = "Admins and Billing contacts" if policy == ADMINS_AND_BILLING else "everyone"
        assert messages_of(response) == [
            f"Acme Trading requires two-factor sign-in for {scope}. Set it up to continue."
        ]
    else:
        assert response.status_code == 200
    # With a second factor, every role opens the page.
    with_totp(user)
    assert client.get(OVERVIEW).status_code == 200


def test_every_page_of_the_organisation_is_gated_with_its_own_next(client_for, org, admin):
    set_policy(org, ADMINS_AND_BILLING)
    client = client_for(admin)
    for url in (
        "/o/acme/settings/users/",
        "/o/acme/settings/organisation/?tab=1",
        "/o/acme/notifications/",
        "/o/acme/flows/",
        "/o/acme/settings/subscription/",
    ):
        response = client.get(url)
        assert (response.status_code, response["Location"]) == (302, to_security(url))


def test_a_post_while_gated_changes_nothing(client_for, org, admin):
    set_policy(org, ADMINS_AND_BILLING)
    response = client_for(admin).post(
        "/o/acme/settings/organisation/", {"name": "Hacked", "time_zone": "UTC"}
    )
    assert response["Location"] == to_security("/o/acme/settings/organisation/")
    org.refresh_from_db()
    assert org.name == "Acme Trading"
    assert not AuditEvent.objects.filter(organisation=org).exists()


def test_a_gated_admin_cannot_reach_the_policy_form_either(client_for, org, admin):
    set_policy(org, EVERYONE)
    response = client_for(admin).post(POLICY_URL, {"policy": OFF})
    assert response["Location"] == to_security(POLICY_URL)
    org.refresh_from_db()
    assert org.two_factor_policy == EVERYONE


def test_only_the_organisation_with_the_policy_is_gated(client_for, org, other_org):
    user = MembershipFactory(organisation=org, role="admin").user
    MembershipFactory(organisation=other_org, user=user, role="admin")
    set_policy(org, EVERYONE)
    client = client_for(user)
    assert client.get("/o/globex/").status_code == 200
    assert client.get("/o/acme/")["Location"] == to_security("/o/acme/")
    # And the other way round: Globex's policy never applies to Acme.
    set_policy(org, OFF)
    set_policy(other_org, EVERYONE)
    assert client.get("/o/acme/").status_code == 200
    assert client.get("/o/globex/")["Location"] == to_security("/o/globex/")


def test_the_signed_in_landing_leads_through_the_gate(client_for, org, member):
    set_policy(org, EVERYONE)
    client = client_for(member)
    landing = client.get(reverse("accounts:home"))
    assert landing["Location"] == OVERVIEW
    assert client.get(OVERVIEW)["Location"] == to_security(OVERVIEW)


# Single sign-on ------------------------------------------------------------------------


@pytest.fixture
def idp():
    return TestIdP()


@pytest.fixture
def sso_org(org, admin, idp):
    """Acme on Enterprise with the test IdP saved, acme.test routed to it, tested."""
    SubscriptionFactory(organisation=org, plan=plan("enterprise"))
    actor = Actor(user=admin)
    idp_configure(
        organisation=org,
        actor=actor,
        idp_type="okta",
        metadata_url="",
        metadata_xml=idp.metadata(),
        now=timezone.now(),
    )
    domain_add(organisation=org, actor=actor, domain="acme.test", now=timezone.now())
    SsoConfiguration.objects.filter(organisation=org).update(tested_at=timezone.now())
    org.refresh_from_db()
    return org


def test_a_session_through_the_organisations_idp_is_exempt(client, idp, sso_org, member):
    set_policy(sso_org, EVERYONE)
    response = SsoBrowser(client, idp, sso_org).sign_in(email=member.email)
    assert response.status_code == 302
    assert client.session[SSO_SESSION_KEY] == sso_org.pk
    assert client.get(OVERVIEW).status_code == 200


def test_the_sso_gate_wins_over_the_two_factor_gate(client_for, sso_org, admin, member):
    enforcement_set(
        organisation=sso_org,
        actor=Actor(user=admin),
        enforced=True,
        backup_admin=admin,
        now=timezone.now(),
    )
    set_policy(sso_org, EVERYONE)
    response = client_for(member).get(OVERVIEW)
    assert response["Location"] == f"/sso/acme/login/?{urlencode({'next': OVERVIEW})}"


def test_the_sso_backup_admin_signs_in_with_a_password_so_is_not_exempt(client_for, sso_org, admin):
    enforcement_set(
        organisation=sso_org,
        actor=Actor(user=admin),
        enforced=True,
        backup_admin=admin,
        now=timezone.now(),
    )
    assert configuration_for(sso_org).backup_admin == admin
    set_policy(sso_org, ADMINS_AND_BILLING)
    response = client_for(admin).get(OVERVIEW)
    assert response["Location"] == to_security(OVERVIEW)


# Invitations -----------------------------------------------------------------------------


def test_a_new_account_joining_lands_on_setup(client, org, admin):
    set_policy(org, EVERYONE)
    invitation = InvitationFactory(organisation=org, role="member", invited_by=admin)
    url = reverse("accounts:invitation_accept", args=[invitation.token])
    response = client.post(url, {"full_name": "Nina New", "password": "a-long-fine-passphrase"})

    assert response["Location"] == to_security(OVERVIEW)
    user = User.objects.get(email=invitation.email)
    assert Membership.objects.get(user=user, organisation=org).role == "member"
    assert messages_of(response) == [
        "Welcome to Acme Trading.",
        "Acme Trading requires two-factor sign-in for everyone. Set it up to continue.",
    ]


@pytest.mark.parametrize(
    ("role", "has_second_factor", "lands"),
    [
        ("billing", False, "setup"),
        ("billing", True, "overview"),
        ("member", False, "overview"),  # Members are out of scope of this policy
    ],
)
def test_an_existing_user_accepting_lands_on_setup_when_in_scope(
    client, org, other_org, role, has_second_factor, lands
):
    set_policy(org, ADMINS_AND_BILLING)
    existing = MembershipFactory(organisation=other_org, role="admin").user
    if has_second_factor:
        with_totp(existing)
    invitation = InvitationFactory(organisation=org, email=existing.email, role=role)
    client.force_login(existing)
    response = client.post(reverse("accounts:invitation_accept", args=[invitation.token]))

    assert Membership.objects.get(user=existing, organisation=org).role == role
    assert response["Location"] == (to_security(OVERVIEW) if lands == "setup" else OVERVIEW)


# Settings > Users ------------------------------------------------------------------------


def users_page(client):
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/o/acme/settings/users/")
    assert response.status_code == 200
    return response.content.decode(), len(captured)


def test_users_shows_who_has_a_second_factor_in_constant_queries(client_for, org, admin):
    with_totp(admin)
    MembershipFactory(organisation=org, role="member", user__email="nofactor@acme.test")
    client = client_for(admin)
    users_page(client)  # the first visit stores the organisation in the session
    body, few = users_page(client)
    rows = body.split("<tbody>", 1)[1].split("</tbody>", 1)[0].split("<tr>")[1:]
    admin_row = next(row for row in rows if admin.email in row)
    other_row = next(row for row in rows if "nofactor@acme.test" in row)
    assert '<td data-label="2FA"><span class="badge badge--ok">On</span></td>' in admin_row
    assert '<td data-label="2FA"><span class="badge">Off</span></td>' in other_row

    for _ in range(5):
        with_totp(MembershipFactory(organisation=org, role="member").user)
    body, many = users_page(client)
    assert body.count('<span class="badge badge--ok">On</span></td>') == 6
    assert many == few


# Cost ------------------------------------------------------------------------------------


def overview_tables(client):
    """The table each query of the Overview reads (an EXISTS selects `1 AS "a"` first)."""
    client.get(OVERVIEW)  # the first visit stores the organisation in the session
    with CaptureQueriesContext(connection) as captured:
        response = client.get(OVERVIEW)
    assert response.status_code == 200
    return [
        "mfa_authenticator" if 'FROM "mfa_authenticator"' in query["sql"] else table
        for query, table in zip(captured, tables(captured), strict=True)
    ]


def test_the_gate_costs_nothing_without_a_policy_and_one_query_when_it_applies(
    client_for, org, member
):
    client = client_for(with_totp(member))
    without = overview_tables(client)
    assert "mfa_authenticator" not in without

    set_policy(org, ADMINS_AND_BILLING)  # not the Member's role: still free
    assert overview_tables(client) == without

    set_policy(org, EVERYONE)
    with_policy = overview_tables(client)
    position = without.index("accounts_membership") + 1
    assert with_policy == [*without[:position], "mfa_authenticator", *without[position:]]


def test_the_machine_api_is_not_a_user_session_and_is_not_gated(client, org, admin):
    """An integration posting Sync Info with its API key keeps working under the policy."""
    set_policy(org, EVERYONE)
    SubscriptionFactory(organisation=org, plan=plan("standard"))
    environment = EnvironmentFactory(organisation=org, name="Production")
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    _, plain = api_key_create(
        environment=environment, actor=Actor(user=admin), name="runtime", now=timezone.now()
    )
    records = [
        {
            "flow_id": str(flow.public_id),
            "record_key": "order-1",
            "status": "success",
            "direction": "outbound",
            "synced_at": timezone.now().isoformat(),
            "message": "ok",
        }
    ]
    response = sync_info_post(client, plain, records, key="batch-1")
    assert response.status_code == 201, response.content
    assert response.json()["accepted"] == 1
