import re

import pytest
from django.urls import reverse

from accounts.models import AuditEvent, Membership
from tests.accounts.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def membership_of(user, org):
    return Membership.objects.get(user=user, organisation=org)


def url(name, org, user):
    return reverse(f"accounts:{name}", args=[org.slug, membership_of(user, org).public_id])


def test_users_page_lists_members_with_role_and_status(
    client_for, admin, billing_user, member, org
):
    Membership.objects.filter(user=member).update(status="deactivated")
    body = client_for(admin).get(reverse("accounts:users", args=[org.slug])).content.decode()
    for text in ("admin@acme.test", "billing@acme.test", "member@acme.test", "Billing contact"):
        assert text in body
    assert "Deactivated" in body


def test_users_page_query_count_does_not_grow_with_members(
    client_for, admin, org, django_assert_num_queries
):
    client = client_for(admin)
    users_url = reverse("accounts:users", args=[org.slug])
    client.get(users_url)  # warm the session
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        client.get(users_url)
    expected = len(few.captured_queries)  # read now: each request resets the query log
    MembershipFactory.create_batch(25, organisation=org)
    with django_assert_num_queries(expected):
        response = client.get(users_url)
    assert response.content.decode().count("/settings/users/") >= 26


def test_admin_changes_a_role_and_it_is_audited(client_for, admin, billing_user, org):
    response = client_for(admin).post(url("member_role", org, billing_user), {"role": "member"})
    assert response.status_code == 302
    assert membership_of(billing_user, org).role == "member"
    event = AuditEvent.objects.get(action="member.role_changed")
    assert event.changes == {"role": {"old": "billing", "new": "member"}}
    assert (event.actor, event.target_label) == (admin, "billing@acme.test")


def test_the_last_admin_cannot_be_demoted(client_for, admin, org):
    response = client_for(admin).post(
        url("member_role", org, admin), {"role": "member"}, follow=True
    )
    assert "is the last active Admin and cannot be demoted" in response.content.decode()
    assert membership_of(admin, org).role == "admin"
    assert not AuditEvent.objects.filter(action="member.role_changed").exists()


def test_an_admin_can_be_demoted_when_another_admin_remains(client_for, admin, billing_user, org):
    Membership.objects.filter(user=billing_user).update(role="admin")
    client_for(admin).post(url("member_role", org, admin), {"role": "billing"})
    assert membership_of(admin, org).role == "billing"


def test_a_deactivated_admin_does_not_count_as_the_remaining_admin(
    client_for, admin, billing_user, org
):
    Membership.objects.filter(user=billing_user).update(role="admin", status="deactivated")
    response = client_for(admin).post(
        url("member_role", org, admin), {"role": "member"}, follow=True
    )
    assert "last active Admin" in response.content.decode()
    assert membership_of(admin, org).role == "admin"


def test_deactivate_ends_the_users_sessions_at_once(client, client_for, admin, member, org):
    from django.test import Client

    member_client = Client()
    member_client.force_login(member)
    dashboard = reverse("portal:overview", args=[org.slug])
    assert member_client.get(dashboard).status_code == 200

    response = client_for(admin).post(url("member_deactivate", org, member))
    assert response.status_code == 302
    assert membership_of(member, org).status == "deactivated"

    after = member_client.get(dashboard)
    assert after.status_code == 302
    assert after["Location"].startswith(reverse("account_login"))
    # Signing in again does not give access to the organisation.
    member.refresh_from_db()
    member_client.force_login(member)
    assert member_client.get(dashboard).status_code == 404


def test_reactivate_restores_access(client_for, admin, member, org):
    client = client_for(admin)
    client.post(url("member_deactivate", org, member))
    client.post(url("member_reactivate", org, member))
    assert membership_of(member, org).status == "active"
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions[-2:] == ["member.deactivated", "member.reactivated"]


def test_the_last_admin_cannot_be_deactivated_or_removed(client_for, admin, org):
    client = client_for(admin)
    for name, verb in (("member_deactivate", "deactivated"), ("member_remove", "removed")):
        response = client.post(url(name, org, admin), follow=True)
        assert f"is the last active Admin and cannot be {verb}" in response.content.decode()
    assert membership_of(admin, org).status == "active"


def test_remove_user_confirms_then_removes_and_keeps_history(client_for, admin, member, org):
    from django.test import Client

    member_client = Client()
    member_client.force_login(member)
    client = client_for(admin)
    client.post(url("member_role", org, member), {"role": "billing"})
    confirm = client.get(url("member_remove", org, member))
    assert "will lose access to Acme Trading immediately" in confirm.content.decode()
    response = client.post(url("member_remove", org, member))
    assert response.status_code == 302
    assert not Membership.objects.filter(user=member, organisation=org).exists()
    member.refresh_from_db()  # the user and their history stay
    assert AuditEvent.objects.filter(
        target_label=member.email, action="member.role_changed"
    ).exists()
    assert AuditEvent.objects.get(action="member.removed").changes == {
        "role": {"old": "billing", "new": None}
    }
    assert member_client.get(reverse("portal:overview", args=[org.slug])).status_code == 302


def test_deactivation_in_one_organisation_keeps_access_to_another(
    client_for, admin, member, org, other_org
):
    MembershipFactory(organisation=other_org, user=member, role="admin")
    client_for(admin).post(url("member_deactivate", org, member))
    from django.test import Client

    member.refresh_from_db()
    member_client = Client()
    member_client.force_login(member)
    assert member_client.get(reverse("portal:overview", args=[other_org.slug])).status_code == 200
    assert member_client.get(reverse("portal:overview", args=[org.slug])).status_code == 404


@pytest.mark.parametrize("role_fixture", ["member", "billing_user"])
@pytest.mark.parametrize("name", ["users", "user_invite", "organisation", "audit_log"])
def test_non_admins_get_403_on_admin_pages(request, client_for, org, role_fixture, name):
    user = request.getfixturevalue(role_fixture)
    response = client_for(user).get(reverse(f"accounts:{name}", args=[org.slug]))
    assert response.status_code == 403
    assert "cannot open this page" in response.content.decode()


def test_member_cannot_change_anything_by_posting(client_for, admin, member, org):
    client = client_for(member)
    response = client.post(url("member_role", org, admin), {"role": "member"})
    assert response.status_code == 403
    response = client.post(
        reverse("accounts:user_invite", args=[org.slug]), {"email": "a@b.test", "role": "admin"}
    )
    assert response.status_code == 403
    assert membership_of(admin, org).role == "admin"
    from accounts.models import Invitation

    assert Invitation.objects.count() == 0


def test_settings_navigation_matches_the_role(client_for, admin, billing_user, member, org):
    dashboard = reverse("portal:overview", args=[org.slug])
    subscription_page = reverse("subscriptions:settings", args=[org.slug])

    def navigation(user) -> list[str]:
        body = client_for(user).get(subscription_page).content.decode()
        nav = re.search(r'<nav class="settings-nav".*?</nav>', body, re.S).group(0)
        return re.findall(r"<a href=[^>]*>([^<]+)</a>", nav)

    assert navigation(admin) == [
        "Subscription",
        "Billing",
        "Users",
        "Organisation",
        "SSO",
        "Privacy",
    ]
    assert navigation(billing_user) == ["Subscription", "Billing"]
    member_client = client_for(member)
    assert ">Settings</a>" not in member_client.get(dashboard).content.decode()
    settings_url = reverse("accounts:settings", args=[org.slug])
    assert member_client.get(settings_url).status_code == 403
    assert client_for(billing_user).get(settings_url)["Location"] == reverse(
        "subscriptions:settings", args=[org.slug]
    )


def test_organisation_menu_lists_every_organisation_to_switch(client_for, admin, org, other_org):
    MembershipFactory(organisation=other_org, user=admin, role="member")
    client = client_for(admin)
    body = client.get(reverse("portal:overview", args=[org.slug])).content.decode()
    assert reverse("portal:overview", args=[other_org.slug]) in body
    assert 'aria-current="true">Acme Trading' in body
    # Switching: the other organisation opens, and becomes the one home leads to.
    assert client.get(reverse("portal:overview", args=[other_org.slug])).status_code == 200
    assert client.get(reverse("accounts:home"))["Location"] == reverse(
        "portal:overview", args=[other_org.slug]
    )


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_admins_demoting_each_other_at_once_leave_one_admin():
    """The organisation row lock serialises membership changes, so the check cannot race."""
    import threading

    from django.db import connection
    from django.utils import timezone

    from accounts.audit import Actor
    from accounts.services import membership_change_role
    from core.errors import ServiceError
    from tests.accounts.factories import OrganisationFactory

    org = OrganisationFactory()
    first, second = MembershipFactory.create_batch(2, organisation=org, role="admin")
    barrier = threading.Barrier(2)
    outcomes = []

    def demote(target, actor):
        try:
            barrier.wait()
            membership_change_role(
                membership=target, actor=Actor(user=actor.user), role="member", now=timezone.now()
            )
            outcomes.append("demoted")
        except ServiceError as error:
            outcomes.append(error.message)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=demote, args=(first, second)),
        threading.Thread(target=demote, args=(second, first)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("demoted") == 1
    [refusal] = [outcome for outcome in outcomes if outcome != "demoted"]
    assert "is the last active Admin and cannot be demoted" in refusal
    assert Membership.objects.filter(organisation=org, role="admin").count() == 1
