"""SP-initiated sign-in through the organisation's IdP (HTTP-POST binding), and who may."""

import pytest
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import Invitation, Membership, User
from accounts.tenancy import SSO_SESSION_KEY
from core.errors import ServiceError
from sso.configuration import idp_configure
from sso.models import SsoAttempt
from sso.provisioning import provisioning_set
from tests.accounts.factories import InvitationFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def signed_in_user_id(client):
    return client.session.get("_auth_user_id")


def test_member_signs_in_through_the_idp(sso_client, member, enterprise):
    request = sso_client.start(next_url="/o/acme/flows/")
    response = sso_client.post(sso_client.answer(request, email="Member@Acme.test"))
    assert response.status_code == 302
    assert response["Location"] == "/o/acme/flows/"
    assert signed_in_user_id(sso_client.client) == str(member.pk)
    assert sso_client.client.session[SSO_SESSION_KEY] == enterprise.pk
    attempt = SsoAttempt.objects.get()
    assert (attempt.mode, attempt.outcome, attempt.email) == (
        "sign_in",
        "success",
        "member@acme.test",
    )
    assert attempt.user == member
    # The portal opens for the session.
    assert sso_client.client.get("/o/acme/").status_code == 200


def test_next_url_to_another_site_is_dropped(sso_client, member):
    request = sso_client.start(next_url="https://evil.test/")
    response = sso_client.post(sso_client.answer(request))
    assert response["Location"] == "/o/acme/"


def test_sign_in_with_sso_routes_the_work_email_to_its_organisation(sso_client, idp):
    response = sso_client.client.post("/sso/", {"email": "someone@ACME.test"})
    assert response.status_code == 302
    assert response["Location"].startswith(idp.sso_url)


def test_sign_in_with_sso_for_an_unknown_domain_says_so(client, configured):
    response = client.post("/sso/", {"email": "someone@unknown.test"})
    assert response.status_code == 400
    assert "Single sign-on is not set up for unknown.test" in response.content.decode()
    response = client.post("/sso/", {"email": "not an email"})
    assert response.status_code == 400


def test_login_page_links_to_sign_in_with_sso(client):
    body = client.get("/accounts/login/").content.decode()
    assert 'href="/sso/"' in body
    assert "Sign in with SSO" in body


def test_test_mode_shows_what_the_idp_sent_and_signs_nobody_in(sso_client, member, configured):
    request = sso_client.start(mode="test")
    response = sso_client.post(
        sso_client.answer(
            request, attributes={"email": ["member@acme.test"], "department": ["Finance"]}
        )
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "SSO test succeeded" in body
    assert "department" in body
    assert "Finance" in body
    assert signed_in_user_id(sso_client.client) is None
    configured.refresh_from_db()
    assert configured.tested_at is not None
    assert SsoAttempt.objects.get().mode == "test"


def test_test_mode_failure_shows_the_exact_reason(sso_client, configured):
    request = sso_client.start(mode="test")
    response = sso_client.post(sso_client.answer(request, email="stranger@elsewhere.test"))
    assert response.status_code == 403
    body = response.content.decode()
    assert "SSO test failed" in body
    assert "stranger@elsewhere.test is outside Acme Trading&#x27;s SSO domains" in body
    configured.refresh_from_db()
    assert configured.tested_at is None


def test_a_test_started_before_the_idp_changed_does_not_count(sso_client, configured, admin, idp):

    request = sso_client.start(mode="test")
    idp_configure(
        organisation=configured.organisation,
        actor=Actor(user=admin),
        idp_type="okta",
        metadata_url="",
        metadata_xml=idp.metadata(),
        now=timezone.now(),
    )
    assert sso_client.post(sso_client.answer(request, email="admin@acme.test")).status_code == 200
    configured.refresh_from_db()
    assert configured.tested_at is None


# Who may sign in -----------------------------------------------------------------------


def test_unknown_person_from_the_domain_is_refused_by_default(sso_client):
    response = sso_client.sign_in(email="new.person@acme.test")
    assert response.status_code == 403
    assert "not a user of Acme Trading" in response.content.decode()
    assert not User.objects.filter(email="new.person@acme.test").exists()


def test_new_person_is_created_with_the_chosen_role_when_provisioning_is_on(
    sso_client, configured, admin
):

    provisioning_set(
        organisation=configured.organisation,
        actor=Actor(user=admin),
        enabled=True,
        role="billing",
        now=timezone.now(),
    )
    response = sso_client.sign_in(
        email="new.person@acme.test",
        attributes={"email": ["new.person@acme.test"], "displayName": ["New Person"]},
    )
    assert response.status_code == 302
    user = User.objects.get(email="new.person@acme.test")
    assert user.full_name == "New Person"
    assert not user.has_usable_password()
    assert Membership.objects.get(user=user).role == "billing"
    assert user.emailaddress_set.get().verified


def test_provisioning_never_attaches_an_existing_account(sso_client, configured, admin):

    provisioning_set(
        organisation=configured.organisation,
        actor=Actor(user=admin),
        enabled=True,
        role="member",
        now=timezone.now(),
    )
    UserFactory(email="existing@acme.test")
    response = sso_client.sign_in(email="existing@acme.test")
    assert response.status_code == 403
    assert "exists but is not a user of Acme Trading" in response.content.decode()
    assert not Membership.objects.filter(user__email="existing@acme.test").exists()


def test_provisioning_cannot_make_admins(configured, admin):

    with pytest.raises(ServiceError):
        provisioning_set(
            organisation=configured.organisation,
            actor=Actor(user=admin),
            enabled=True,
            role="admin",
            now=timezone.now(),
        )


def test_invited_person_signs_in_and_the_invitation_is_accepted(sso_client, configured, admin):
    invitation = InvitationFactory(
        organisation=configured.organisation, email="invited@acme.test", role="billing"
    )
    response = sso_client.sign_in(email="invited@acme.test")
    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.ACCEPTED
    assert Membership.objects.get(user__email="invited@acme.test").role == "billing"


def test_deactivated_member_is_refused(sso_client, member):
    Membership.objects.filter(user=member).update(status=Membership.Status.DEACTIVATED)
    response = sso_client.sign_in(email="member@acme.test")
    assert response.status_code == 403
    assert "deactivated" in response.content.decode()
    assert signed_in_user_id(sso_client.client) is None


def test_member_with_an_address_outside_the_domains_may_sign_in(sso_client, configured):
    contractor = MembershipFactory(
        organisation=configured.organisation, user=UserFactory(email="pat@contractor.test")
    ).user
    response = sso_client.sign_in(email="pat@contractor.test")
    assert response.status_code == 302
    assert signed_in_user_id(sso_client.client) == str(contractor.pk)
