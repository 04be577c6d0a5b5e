"""Enforce SSO for all users: only after a successful test, only with a backup admin, who
keeps password sign-in; everyone else goes through the IdP. Plus ops' switch-off."""

import pytest
from django.contrib.admin.sites import site
from django.test import Client
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import AuditEvent
from core.errors import ServiceError
from sso.enforcement import enforcement_set, enforcement_switch_off_by_ops
from sso.models import SsoAttempt, SsoConfiguration
from subscriptions.models import Plan, Subscription
from tests.accounts.factories import MembershipFactory, OrganisationFactory, UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def enforce(client, backup_admin, enforced=True):
    return client.post(
        "/o/acme/settings/sso/enforcement/",
        {
            "backup_admin": backup_admin.pk if backup_admin else "",
            "enforced": "on" if enforced else "",
        },
    )


@pytest.fixture
def tested(configured):
    SsoConfiguration.objects.filter(pk=configured.pk).update(tested_at=timezone.now())
    configured.refresh_from_db()
    return configured


@pytest.fixture
def enforced(tested, admin):
    return enforcement_set(
        organisation=tested.organisation,
        actor=Actor(user=admin),
        enforced=True,
        backup_admin=admin,
        now=timezone.now(),
    )


def with_password(user):
    user.set_password(PASSWORD)
    user.save()
    user.emailaddress_set.get_or_create(
        email=user.email, defaults={"verified": True, "primary": True}
    )
    user.emailaddress_set.update(verified=True)
    return user


def password_login(user):
    client = Client()
    response = client.post("/accounts/login/", {"login": user.email, "password": PASSWORD})
    return client, response


def test_enforcing_needs_a_successful_test(client_for, admin, configured):
    response = enforce(client_for(admin), admin)
    assert response.status_code == 400
    assert "Run Test SSO successfully" in response.content.decode()
    configured.refresh_from_db()
    assert not configured.enforced


def test_enforcing_needs_a_backup_admin(client_for, admin, tested):
    response = enforce(client_for(admin), None)
    assert response.status_code == 400
    assert "Choose a backup admin" in response.content.decode()
    tested.refresh_from_db()
    assert not tested.enforced


def test_backup_admin_must_be_an_admin_of_this_organisation(
    client_for, admin, member, outsider, tested
):
    for candidate in (member, outsider):
        response = enforce(client_for(admin), candidate)
        assert response.status_code == 400
        assert "Select a valid choice" in response.content.decode()
    tested.refresh_from_db()
    assert not tested.enforced
    assert tested.backup_admin is None


def test_enforce_after_a_test_with_a_backup_admin(client_for, admin, tested):
    response = enforce(client_for(admin), admin)
    assert response.status_code == 302
    tested.refresh_from_db()
    assert tested.enforced
    assert tested.backup_admin == admin
    event = AuditEvent.objects.get(
        organisation=tested.organisation, action="sso.enforcement_changed"
    )
    assert event.changes["enforced"] == {"old": False, "new": True}


def test_when_enforced_members_cannot_sign_in_with_a_password(enforced, member):
    with_password(member)
    client, response = password_login(member)
    assert response.status_code == 200
    assert "Acme Trading requires single sign-on" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_backup_admin_still_signs_in_with_a_password(enforced, admin):
    with_password(admin)
    client, response = password_login(admin)
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(admin.pk)
    assert client.get("/o/acme/settings/sso/").status_code == 200


def test_a_password_session_is_sent_to_the_idp_once_sso_is_enforced(enforced, member, client_for):
    response = client_for(member).get("/o/acme/flows/")
    assert response.status_code == 302
    assert response["Location"] == "/sso/acme/login/?next=%2Fo%2Facme%2Fflows%2F"


def test_member_of_another_organisation_too_still_signs_in_for_that_one(enforced, member):
    other = OrganisationFactory(slug="side-project")
    MembershipFactory(organisation=other, user=member)
    with_password(member)
    client, response = password_login(member)
    assert response.status_code == 302
    assert client.get("/o/side-project/").status_code == 200
    assert client.get("/o/acme/").status_code == 302  # to Acme's IdP


def test_sso_session_opens_its_organisation_only(sso_client, member):
    other = OrganisationFactory(name="Side Project", slug="side-project")
    MembershipFactory(organisation=other, user=member)
    assert sso_client.sign_in(email="member@acme.test").status_code == 302
    assert sso_client.client.get("/o/acme/").status_code == 200
    response = sso_client.client.get("/o/side-project/")
    assert response.status_code == 403
    assert "Sign in again to open Side Project" in response.content.decode()


def test_sso_sign_in_works_when_enforced(enforced, sso_client, member):
    assert sso_client.sign_in(email="member@acme.test").status_code == 302
    assert sso_client.client.get("/o/acme/flows/").status_code == 200


def test_enforcement_lapses_with_the_enterprise_plan(enforced, member, client_for):
    Subscription.objects.filter(organisation=enforced.organisation).update(
        plan=Plan.objects.get(code="professional")
    )
    with_password(member)
    client, response = password_login(member)
    assert response.status_code == 302


def test_switching_enforcement_off_needs_no_test(client_for, admin, enforced):
    response = enforce(client_for(admin), admin, enforced=False)
    assert response.status_code == 302
    enforced.refresh_from_db()
    assert not enforced.enforced


# Ops ------------------------------------------------------------------------------------


@pytest.fixture
def staff(db):
    return UserFactory(email="ops@portal.test", is_staff=True, is_superuser=True)


def test_ops_switch_enforcement_off_with_a_reason(client_for, staff, enforced):
    client = client_for(staff)
    url = "/admin/sso/ssoconfiguration/"
    assert client.get(url).status_code == 200
    assert client.get(f"{url}{enforced.pk}/change/").status_code == 200
    assert client.get("/admin/sso/ssoattempt/").status_code == 200
    # The action asks for a reason first; without one nothing changes.
    form = client.post(url, {"action": "switch_off_enforcement", "_selected_action": [enforced.pk]})
    assert form.status_code == 200
    assert b"Reason" in form.content
    client.post(
        url,
        {
            "action": "switch_off_enforcement",
            "_selected_action": [enforced.pk],
            "apply": "1",
            "reason": "",
        },
    )
    enforced.refresh_from_db()
    assert enforced.enforced
    client.post(
        url,
        {
            "action": "switch_off_enforcement",
            "_selected_action": [enforced.pk],
            "apply": "1",
            "reason": "IdP certificate broke, ticket 123",
        },
    )
    enforced.refresh_from_db()
    assert not enforced.enforced
    event = AuditEvent.objects.get(action="sso.enforcement_switched_off_by_support")
    assert event.actor == staff
    assert "ticket 123" in event.changes["reason"]["new"]


def test_ops_switch_off_is_refused_without_a_reason(enforced, staff):
    with pytest.raises(ServiceError):
        enforcement_switch_off_by_ops(
            organisation=enforced.organisation,
            actor=Actor(user=staff),
            reason=" ",
            now=timezone.now(),
        )
    enforced.refresh_from_db()
    assert enforced.enforced


def test_sso_admin_is_registered_read_only(staff):
    for model in (SsoConfiguration, SsoAttempt):
        assert model in site._registry
        model_admin = site._registry[model]
        assert not model_admin.has_change_permission(type("R", (), {"user": staff})())
