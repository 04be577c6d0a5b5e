import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import AuditEvent, Membership
from tests.accounts.factories import InvitationFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

CHANGELISTS = [
    "accounts/organisation",
    "accounts/user",
    "accounts/membership",
    "accounts/invitation",
    "accounts/auditevent",
    "accounts/outgoingemail",
    "accounts/primaryemailchange",
]


@pytest.fixture
def ops(db):
    return UserFactory(email="ops@example.test", is_staff=True, is_superuser=True)


def test_customer_roles_do_not_open_django_admin(client_for, admin):
    response = client_for(admin).get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("changelist", CHANGELISTS)
def test_ops_changelists_load_with_constant_queries(client_for, ops, org, changelist):
    client = client_for(ops)
    url = f"/admin/{changelist}/"
    MembershipFactory(organisation=org, role="admin")
    InvitationFactory(organisation=org)
    client.get(url)
    with CaptureQueriesContext(connection) as few:
        response = client.get(url + "?q=")
    assert response.status_code == 200
    expected = len(few.captured_queries)
    for _ in range(10):
        membership = MembershipFactory(organisation=org)
        InvitationFactory(organisation=org, invited_by=membership.user)
        AuditEvent.objects.create(organisation=org, actor=membership.user, action="x")
    with CaptureQueriesContext(connection) as many:
        assert client.get(url + "?q=").status_code == 200
    assert len(many.captured_queries) == expected


def test_ops_role_change_goes_through_the_service_and_keeps_the_last_admin(
    client_for, ops, admin, org
):
    membership = Membership.objects.get(user=admin)
    response = client_for(ops).post(
        f"/admin/accounts/membership/{membership.pk}/change/", {"role": "member"}, follow=True
    )
    assert "last active Admin" in response.content.decode()
    membership.refresh_from_db()
    assert membership.role == "admin"


def test_ops_deactivation_is_audited_with_the_ops_user(client_for, ops, admin, member, org):
    membership = Membership.objects.get(user=member)
    client_for(ops).post(
        "/admin/accounts/membership/",
        {"action": "deactivate", "_selected_action": [membership.pk]},
    )
    membership.refresh_from_db()
    assert membership.status == "deactivated"
    assert AuditEvent.objects.get(action="member.deactivated").actor == ops


def test_audit_log_cannot_be_edited_in_admin(client_for, ops, org):
    event = AuditEvent.objects.create(organisation=org, action="organisation.updated")
    response = client_for(ops).post(
        f"/admin/accounts/auditevent/{event.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
