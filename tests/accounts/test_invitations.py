import re
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Invitation, Membership, User
from tests.accounts.factories import PASSWORD, InvitationFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def invite_url(org):
    return reverse("accounts:user_invite", args=[org.slug])


def link_from(message) -> str:
    match = re.search(r"https?://[^\s]+/invitations/[^\s/]+/", message.body)
    assert match, message.body
    return "/" + match.group(0).split("://", 1)[1].split("/", 1)[1]


def test_admin_invites_a_user_by_email_with_a_role(client_for, admin, org, committed):
    client = client_for(admin)
    with committed():
        response = client.post(
            invite_url(org), {"email": "New.Person@Example.test", "role": "billing"}
        )
    assert response.status_code == 302
    invitation = Invitation.objects.get(organisation=org)
    assert (invitation.email, invitation.role, invitation.status) == (
        "new.person@example.test",
        "billing",
        "pending",
    )
    assert invitation.expires_at - invitation.created_at == timedelta(days=7)
    assert invitation.invited_by == admin
    [message] = mail.outbox
    assert message.to == ["new.person@example.test"]
    assert "Acme Trading" in message.subject
    assert "as Billing contact" in message.body
    assert "valid for 7 days" in message.body
    assert invitation.token_hash not in message.body  # only the raw token travels
    page = client.get(reverse("accounts:users", args=[org.slug]))
    assert "new.person@example.test" in page.content.decode()
    event = AuditEvent.objects.get(action="invitation.created")
    assert (event.actor, event.target_label, event.ip_address) == (
        admin,
        "new.person@example.test",
        "127.0.0.1",
    )


@pytest.mark.parametrize(
    ("email", "message"),
    [
        ("not-an-email", "Enter a valid email address."),
        ("", "This field is required."),
        ("member@acme.test", "member@acme.test is already a user of this organisation."),
        ("MEMBER@acme.test", "member@acme.test is already a user of this organisation."),
    ],
)
def test_bad_invitations_are_refused_with_a_message(
    client_for, admin, member, org, email, message, committed
):
    with committed():
        response = client_for(admin).post(invite_url(org), {"email": email, "role": "member"})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert Invitation.objects.count() == 0
    assert mail.outbox == []


def test_inviting_a_deactivated_user_says_to_reactivate(client_for, admin, member, org):
    Membership.objects.filter(user=member).update(status="deactivated")
    response = client_for(admin).post(invite_url(org), {"email": member.email, "role": "member"})
    assert "is deactivated. Reactivate them from their page instead." in response.content.decode()
    assert Invitation.objects.count() == 0


def test_a_second_pending_invitation_to_the_same_address_is_refused(client_for, admin, org):
    client = client_for(admin)
    client.post(invite_url(org), {"email": "x@example.test", "role": "member"})
    response = client.post(invite_url(org), {"email": "X@example.test", "role": "admin"})
    assert "An invitation to x@example.test is already pending" in response.content.decode()
    assert list(Invitation.objects.values_list("role", flat=True)) == ["member"]


def test_unknown_role_is_refused(client_for, admin, org):
    response = client_for(admin).post(invite_url(org), {"email": "x@example.test", "role": "owner"})
    assert "Select a valid choice" in response.content.decode()
    assert Invitation.objects.count() == 0


def test_a_form_field_cannot_put_the_invitation_in_another_organisation(
    client_for, admin, org, other_org
):
    client_for(admin).post(
        invite_url(org),
        {"email": "x@example.test", "role": "member", "organisation": other_org.pk},
    )
    assert list(Invitation.objects.values_list("organisation", flat=True)) == [org.pk]


def test_new_person_accepts_by_creating_an_account(client, org, admin, committed):
    invitation = InvitationFactory(organisation=org, role="billing", invited_by=admin)
    url = reverse("accounts:invitation_accept", args=[invitation.token])
    page = client.get(url)
    assert "Create account and join" in page.content.decode()
    with committed():
        response = client.post(url, {"full_name": "Nina New", "password": "a-long-fine-passphrase"})
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:overview", args=[org.slug])
    user = User.objects.get(email=invitation.email)
    assert user.full_name == "Nina New"
    assert user.emailaddress_set.get().verified is True
    membership = Membership.objects.get(user=user)
    assert (membership.organisation, membership.role, membership.status) == (
        org,
        "billing",
        "active",
    )
    invitation.refresh_from_db()
    assert (invitation.status, invitation.accepted_by) == ("accepted", user)
    # The user is signed in and lands in the organisation.
    assert client.get(response["Location"]).status_code == 200


def test_weak_password_is_refused_when_accepting(client, org):
    invitation = InvitationFactory(organisation=org)
    url = reverse("accounts:invitation_accept", args=[invitation.token])
    response = client.post(url, {"full_name": "Nina", "password": "12345"})
    body = response.content.decode()
    assert "This password is too short" in body
    assert not User.objects.filter(email=invitation.email).exists()
    invitation.refresh_from_db()
    assert invitation.status == "pending"


def test_existing_account_signs_in_then_accepts(client, org, other_org):
    existing = MembershipFactory(organisation=other_org, role="admin").user
    invitation = InvitationFactory(organisation=org, email=existing.email, role="member")
    url = reverse("accounts:invitation_accept", args=[invitation.token])
    page = client.get(url).content.decode()
    assert "Sign in to accept" in page
    client.force_login(existing)
    response = client.post(url)
    assert response.status_code == 302
    assert Membership.objects.get(user=existing, organisation=org).role == "member"
    # Still a member of their first organisation too.
    assert Membership.objects.filter(user=existing).count() == 2


def test_signed_in_as_someone_else_cannot_accept(client_for, org, outsider):
    invitation = InvitationFactory(organisation=org, email="someone@example.test")
    url = reverse("accounts:invitation_accept", args=[invitation.token])
    client = client_for(outsider)
    assert "sign out, then open the link again" in client.get(url).content.decode()
    response = client.post(url)
    assert response.status_code == 400
    assert "This invitation was sent to someone@example.test" in response.content.decode()
    assert not Membership.objects.filter(organisation=org, user=outsider).exists()


@pytest.mark.parametrize(
    ("change", "status", "text"),
    [
        ({"status": "revoked"}, 410, "was revoked"),
        ({"status": "accepted"}, 410, "has already been used"),
        ({"status": "expired"}, 410, "expired on"),
        ({"expires_at": timezone.now() - timedelta(minutes=1)}, 410, "expired on"),
    ],
)
def test_unusable_invitation_links_explain_why(client, org, change, status, text):
    invitation = InvitationFactory(organisation=org)
    Invitation.objects.filter(pk=invitation.pk).update(**change)
    url = reverse("accounts:invitation_accept", args=[invitation.token])
    for response in (
        client.get(url),
        client.post(url, {"full_name": "X", "password": "a-long-fine-passphrase"}),
    ):
        assert response.status_code == status
        assert text in response.content.decode()
    assert not User.objects.filter(email=invitation.email).exists()


def test_an_invitation_that_ended_on_new_years_eve_says_so_in_the_organisations_zone(
    client_for, client, admin, org, committed, time_machine
):
    # Sent at 22:00 on 24 December in New York and valid 7 days: it ends at 22:00 on New
    # Year's Eve there, when it is already 2028 in UTC.
    org.time_zone = "America/New_York"
    org.save(update_fields=["time_zone"])
    time_machine.move_to(datetime(2027, 12, 25, 3, 0, tzinfo=UTC), tick=False)
    with committed():
        client_for(admin).post(invite_url(org), {"email": "late@example.test", "role": "member"})
    assert "until 31 Dec 2027, 22:00 EST" in mail.outbox[-1].body
    client.logout()
    time_machine.move_to(datetime(2028, 1, 1, 12, 0, tzinfo=UTC), tick=False)
    response = client.get(link_from(mail.outbox[-1]))
    assert response.status_code == 410
    assert "This invitation expired on 31 Dec 2027, 22:00 EST." in response.content.decode()


def test_unknown_invitation_token_is_404(client, db):
    response = client.get(reverse("accounts:invitation_accept", args=["nope"]))
    assert response.status_code == 404
    assert "not valid" in response.content.decode()


def test_invitation_link_works_once(client, org):
    invitation = InvitationFactory(organisation=org)
    url = reverse("accounts:invitation_accept", args=[invitation.token])
    client.post(url, {"full_name": "Nina", "password": "a-long-fine-passphrase"})
    client.logout()
    response = client.post(url, {"full_name": "Nina", "password": "a-long-fine-passphrase"})
    assert response.status_code == 410
    assert User.objects.filter(email=invitation.email).count() == 1


def test_resend_issues_a_new_link_and_voids_the_old_one(client_for, admin, org, committed):
    client = client_for(admin)
    with committed():
        client.post(invite_url(org), {"email": "x@example.test", "role": "member"})
    invitation = Invitation.objects.get()
    first_link = link_from(mail.outbox[0])
    with committed():
        response = client.post(
            reverse("accounts:invitation_resend", args=[org.slug, invitation.public_id])
        )
    assert response.status_code == 302
    assert len(mail.outbox) == 2
    second_link = link_from(mail.outbox[1])
    assert first_link != second_link
    invitation.refresh_from_db()
    assert invitation.sent_count == 2
    client.logout()
    assert client.get(first_link).status_code == 404
    assert client.get(second_link).status_code == 200


def test_revoke_voids_the_link(client_for, admin, org):
    invitation = InvitationFactory(organisation=org)
    client = client_for(admin)
    client.post(reverse("accounts:invitation_revoke", args=[org.slug, invitation.public_id]))
    invitation.refresh_from_db()
    assert invitation.status == "revoked"
    client.logout()
    url = reverse("accounts:invitation_accept", args=[invitation.token])
    assert "was revoked" in client.get(url).content.decode()
    # Revoking twice says so and changes nothing.
    client.force_login(admin)
    response = client.post(
        reverse("accounts:invitation_revoke", args=[org.slug, invitation.public_id]), follow=True
    )
    assert "This invitation is already revoked." in response.content.decode()


def test_expired_invitations_are_marked_by_the_scheduled_job(org):
    from core.jobs import run_job

    now = timezone.now()
    due = InvitationFactory(organisation=org, expires_at=now - timedelta(seconds=1))
    fresh = InvitationFactory(organisation=org, expires_at=now + timedelta(days=1))
    assert run_job("expire_invitations", now=now) == "1 invitation(s) expired"
    assert run_job("expire_invitations", now=now) == "0 invitation(s) expired"
    due.refresh_from_db()
    fresh.refresh_from_db()
    assert (due.status, fresh.status) == ("expired", "pending")


def test_expired_invitation_can_be_resent_and_then_used(client_for, admin, org, committed):
    invitation = InvitationFactory(organisation=org, status="expired")
    client = client_for(admin)
    with committed():
        client.post(reverse("accounts:invitation_resend", args=[org.slug, invitation.public_id]))
    invitation.refresh_from_db()
    assert invitation.status == "pending"
    assert invitation.expires_at > timezone.now() + timedelta(days=6)
    client.logout()
    response = client.post(
        link_from(mail.outbox[0]), {"full_name": "Late", "password": "a-long-fine-passphrase"}
    )
    assert response.status_code == 302


def test_existing_user_with_password_can_sign_in_with_email(client, db):
    user = UserFactory(email="person@example.test")
    response = client.post(
        reverse("account_login"), {"login": "Person@Example.test", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)
