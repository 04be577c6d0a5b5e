"""GDPR data deletion requests: Settings > Privacy, ops review in Django admin, execution."""

from datetime import UTC, datetime

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.urls import reverse

from accounts.audit import Actor, audit_record
from accounts.models import (
    AuditEvent,
    Invitation,
    KnownBrowser,
    Membership,
    OutgoingEmail,
    User,
    UserSession,
)
from core.errors import ServiceError
from retention.gdpr import (
    _pseudonym_for,
    deletion_request_execute,
    deletion_requests_execute_stuck,
)
from retention.gdpr_review import (
    deletion_request_approve,
    deletion_request_create,
    deletion_request_reject,
)
from retention.models import DataDeletionRequest, DeletionRecord
from sso.models import SsoAttempt
from tests.accounts.factories import InvitationFactory, MembershipFactory, UserFactory
from tests.accounts.sessions import signed_in_session
from tests.subscriptions.factories import SubscriptionFactory
from tests.support.factories import SupportTicketFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.fixture
def ops(db):
    return UserFactory(email="ops@portal.test", is_staff=True, is_superuser=True)


def privacy_url(org):
    return reverse("retention:privacy", args=[org.slug])


def request_for(org, admin, member, **kwargs):
    return deletion_request_create(
        organisation=org,
        actor=Actor(user=admin),
        scope="person",
        subject_user=member,
        reason="Left the company",
        now=NOW,
        **kwargs,
    )


def subjects(messages):
    return [(m.to, m.subject) for m in messages]


# Settings > Privacy -------------------------------------------------------------------------


def test_privacy_page_shows_retention_of_the_plan_and_exports(client_for, admin, org):
    SubscriptionFactory(organisation=org)
    response = client_for(admin).get(privacy_url(org))
    assert response.status_code == 200
    body = response.content.decode()
    plan = org.subscription.plan
    assert f"Sync Info records: {plan.sync_info_retention_days} days" in body
    assert f"Snapshots: {plan.snapshot_retention_days} days" in body
    assert "kept after any deletion, as accounting and tax law require" in body
    assert reverse("usage:sync_info_export", args=[org.slug]) in body
    assert reverse("retention:configuration_export", args=[org.slug]) in body


@pytest.mark.parametrize("role_user", ["member", "billing_user"])
def test_members_and_billing_contacts_may_not_open_privacy(
    request, client_for, admin, org, role_user
):
    user = request.getfixturevalue(role_user)
    client = client_for(user)
    assert client.get(privacy_url(org)).status_code == 403
    response = client.post(privacy_url(org), {"scope": "organisation", "confirm": "on"})
    assert response.status_code == 403
    assert not DataDeletionRequest.objects.exists()


def test_outsider_gets_404(client_for, admin, outsider, org):
    assert client_for(outsider).get(privacy_url(org)).status_code == 404


def test_admin_requests_deletion_of_a_person(client_for, admin, member, org, committed):
    with committed():
        response = client_for(admin).post(
            privacy_url(org), {"scope": "person", "subject": member.pk, "reason": "Left"}
        )
    assert response.status_code == 302
    deletion_request = DataDeletionRequest.objects.get()
    assert (
        deletion_request.scope,
        deletion_request.subject_user,
        deletion_request.subject_email,
        deletion_request.status,
        deletion_request.requested_by,
        deletion_request.reason,
    ) == ("person", member, "member@acme.test", "pending", admin, "Left")
    assert subjects(mail.outbox) == [
        (["admin@acme.test"], "We received your data deletion request for Acme Trading")
    ]
    event = AuditEvent.objects.get(action="deletion_request.created")
    assert (event.actor_email, event.target_label) == ("admin@acme.test", "member@acme.test")
    page = client_for(admin).get(privacy_url(org)).content.decode()
    assert "Personal data of member@acme.test" in page
    assert "Waiting for review" in page


def test_a_user_of_another_organisation_is_a_form_error(client_for, admin, outsider, org):
    response = client_for(admin).post(privacy_url(org), {"scope": "person", "subject": outsider.pk})
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not DataDeletionRequest.objects.exists()


def test_organisation_scope_needs_the_confirmation(client_for, admin, org):
    response = client_for(admin).post(privacy_url(org), {"scope": "organisation"})
    assert response.status_code == 200
    assert "Tick the box to confirm deleting all of the data." in response.content.decode()
    assert not DataDeletionRequest.objects.exists()


def test_service_refuses_a_user_of_another_organisation(admin, outsider, org):
    with pytest.raises(ServiceError) as error:
        request_for(org, admin, outsider)
    assert error.value.message == "That person is not a user of this organisation."
    assert not DataDeletionRequest.objects.exists()


def test_a_second_identical_open_request_is_refused(admin, member, org):
    request_for(org, admin, member)
    with pytest.raises(ServiceError) as error:
        request_for(org, admin, member)
    assert error.value.message == "A deletion request for member@acme.test is already open."
    assert DataDeletionRequest.objects.count() == 1


def test_the_database_constraint_backs_the_check(admin, member, org, monkeypatch):
    request_for(org, admin, member)
    # As if a second click passed the check before the first one committed.
    monkeypatch.setattr(
        "retention.gdpr.DataDeletionRequest.objects.filter",
        lambda **kwargs: DataDeletionRequest.objects.none(),
    )
    with pytest.raises(ServiceError) as error:
        request_for(org, admin, member)
    assert error.value.message == "A deletion request for member@acme.test is already open."
    monkeypatch.undo()
    assert DataDeletionRequest.objects.count() == 1


def test_the_organisation_scope_twice_is_refused(admin, org):
    create = {
        "organisation": org,
        "actor": Actor(user=admin),
        "scope": "organisation",
        "reason": "",
    }
    deletion_request_create(**create, now=NOW)
    with pytest.raises(ServiceError) as error:
        deletion_request_create(**create, now=NOW)
    assert error.value.message == (
        "A request to delete all of the organisation's data is already open."
    )
    assert DataDeletionRequest.objects.count() == 1


# Review and execution -----------------------------------------------------------------------


def other_org_for_sso():
    from tests.accounts.factories import OrganisationFactory

    return OrganisationFactory(slug="elsewhere")


def test_approval_deletes_the_persons_data_and_anonymises_the_account(
    admin, member, org, ops, committed
):
    audit_record(
        organisation=org,
        actor=Actor(user=member),
        action="flow.paused",
        now=NOW,
        target_label="Orders flow",
    )
    audit_record(
        organisation=org,
        actor=Actor(user=admin),
        action="membership.role_changed",
        now=NOW,
        target_label=f"{member.full_name} (member@acme.test)",
        changes={"email": {"old": "member@acme.test", "new": None}},
    )
    InvitationFactory(organisation=org, email="member@acme.test")
    OutgoingEmail.objects.create(
        organisation=org,
        to_email="member@acme.test",
        subject="Usage",
        body_text="...",
        template="usage_alert",
    )
    # What an IdP said about them at sign-in, kept in the SSO attempt log.
    SsoAttempt.objects.create(
        organisation=org, mode="sign_in", outcome="success", email="member@acme.test", user=member
    )
    SsoAttempt.objects.create(
        organisation=other_org_for_sso(),
        mode="sign_in",
        outcome="success",
        email="member@acme.test",
    )
    ticket = SupportTicketFactory(
        organisation=org, subject="Refund", contact_email="member@acme.test", created_by=member
    )
    signed_in_session(member)
    KnownBrowser.objects.create(
        user=member, browser_hash="a" * 64, first_seen_at=NOW, last_seen_at=NOW
    )
    deletion_request = request_for(org, admin, member)
    mail.outbox.clear()
    with committed():
        deletion_request_approve(
            request=deletion_request, reviewer=Actor(user=ops), note="", now=NOW
        )
    ticket.refresh_from_db()
    assert ticket.contact_email == f"{_pseudonym_for(member)}@deleted.invalid"
    assert not SsoAttempt.objects.filter(organisation=org).exists()
    assert SsoAttempt.objects.count() == 1  # another organisation's log is not this request's
    pseudonym = _pseudonym_for(member)
    deletion_request.refresh_from_db()
    assert deletion_request.status == "done"
    assert deletion_request.reviewed_by == ops
    assert deletion_request.subject_email == pseudonym
    record = deletion_request.record
    assert (record.kind, record.actor, record.organisation) == ("gdpr_person", ops, org)
    assert record.counts == {
        "memberships": 1,
        "audit_events_pseudonymised": 4,  # two above, the request created and approved
        "invitations": 1,
        "sso_attempts": 1,
        "support_tickets_pseudonymised": 1,
        "outgoing_emails": 1,
        "accounts_anonymised": 1,
        "email_addresses": 1,
    }
    assert not Membership.objects.filter(user=member).exists()
    flow_event = AuditEvent.objects.get(action="flow.paused")
    assert (flow_event.actor, flow_event.actor_email) == (None, pseudonym)
    role_event = AuditEvent.objects.get(action="membership.role_changed")
    assert role_event.target_label == f"{pseudonym} ({pseudonym})"
    assert role_event.changes == {"email": {"old": pseudonym, "new": None}}
    assert not Invitation.objects.filter(email="member@acme.test").exists()
    member.refresh_from_db()
    assert (member.email, member.full_name, member.is_active, member.has_usable_password()) == (
        f"{pseudonym}@deleted.invalid",
        "",
        False,
        False,
    )
    assert member.session_epoch == 1
    assert not UserSession.objects.filter(user=member).exists()
    assert not KnownBrowser.objects.filter(user=member).exists()
    assert not EmailAddress.objects.filter(user=member).exists()
    assert not OutgoingEmail.objects.filter(to_email="member@acme.test").exists()
    assert subjects(mail.outbox) == [
        (["admin@acme.test"], "Your data deletion request for Acme Trading is approved"),
        (["admin@acme.test"], "The data deletion for Acme Trading is done"),
    ]
    assert "memberships: 1" in mail.outbox[1].body


def test_a_person_in_another_organisation_keeps_the_account(
    admin, member, org, other_org, ops, committed
):
    MembershipFactory(organisation=other_org, user=member, role="member")
    audit_record(organisation=other_org, actor=Actor(user=member), action="x", now=NOW)
    deletion_request = request_for(org, admin, member)
    with committed():
        deletion_request_approve(request=deletion_request, reviewer=Actor(user=ops), now=NOW)
    deletion_request.refresh_from_db()
    assert deletion_request.status == "done"
    assert deletion_request.record.counts["accounts_anonymised"] == 0
    member.refresh_from_db()
    assert (member.email, member.is_active, member.session_epoch) == ("member@acme.test", True, 0)
    assert list(Membership.objects.filter(user=member).values_list("organisation", flat=True)) == [
        other_org.pk
    ]
    # The other organisation's audit trail is not theirs to change.
    assert AuditEvent.objects.get(organisation=other_org).actor_email == "member@acme.test"


def test_rejection_needs_a_note_and_emails_it(admin, member, org, ops, committed):
    deletion_request = request_for(org, admin, member)
    with pytest.raises(ServiceError) as error:
        deletion_request_reject(
            request=deletion_request, reviewer=Actor(user=ops), note=" ", now=NOW
        )
    assert error.value.message == "Give the reason for rejecting the request."
    deletion_request.refresh_from_db()
    assert deletion_request.status == "pending"
    mail.outbox.clear()
    with committed():
        deletion_request_reject(
            request=deletion_request,
            reviewer=Actor(user=ops),
            note="We need it for a dispute",
            now=NOW,
        )
    deletion_request.refresh_from_db()
    assert (
        deletion_request.status,
        deletion_request.review_note,
        deletion_request.reviewed_by,
    ) == (
        "rejected",
        "We need it for a dispute",
        ops,
    )
    assert Membership.objects.filter(user=member, organisation=org).exists()
    [message] = mail.outbox
    assert message.to == ["admin@acme.test"]
    assert message.subject == "Your data deletion request for Acme Trading was rejected"
    assert "Reason: We need it for a dispute" in message.body


def test_approving_an_executed_request_is_refused(admin, member, org, ops, committed):
    deletion_request = request_for(org, admin, member)
    with committed():
        deletion_request_approve(request=deletion_request, reviewer=Actor(user=ops), now=NOW)
    for review in (deletion_request_approve, deletion_request_reject):
        with pytest.raises(ServiceError) as error:
            review(request=deletion_request, reviewer=Actor(user=ops), note="again", now=NOW)
        assert error.value.message == "This request was already executed."
    assert deletion_request_execute(request_id=deletion_request.pk, now=NOW) is None
    assert DeletionRecord.objects.count() == 1


def test_organisation_scope_runs_the_organisation_deletion(admin, member, org, ops, committed):
    deletion_request = deletion_request_create(
        organisation=org, actor=Actor(user=admin), scope="organisation", reason="", now=NOW
    )
    mail.outbox.clear()
    with committed():
        deletion_request_approve(request=deletion_request, reviewer=Actor(user=ops), now=NOW)
    deletion_request.refresh_from_db()
    assert deletion_request.status == "done"
    record = deletion_request.record
    assert (record.kind, record.actor) == ("gdpr_organisation", ops)
    assert record.counts["memberships"] == 2
    org.refresh_from_db()
    assert org.status == "deleted"
    assert not Membership.objects.filter(organisation=org).exists()
    assert User.objects.filter(pk=admin.pk, is_active=True).exists()
    assert subjects(mail.outbox) == [
        (["admin@acme.test"], "Your data deletion request for Acme Trading is approved"),
        (["admin@acme.test"], "The data deletion for Acme Trading is done"),
    ]


# Django admin -------------------------------------------------------------------------------


def test_ops_approve_and_reject_in_django_admin(
    admin, member, billing_user, org, ops, client, client_for, committed
):
    first = request_for(org, admin, member)
    second = request_for(org, admin, billing_user)
    client.force_login(ops)
    changelist = "/admin/retention/datadeletionrequest/"
    assert client.get(changelist + "?status__exact=pending").status_code == 200
    response = client.post(changelist, {"action": "reject", "_selected_action": [second.pk]})
    assert response.status_code == 200
    assert "Note to the requester" in response.content.decode()
    second.refresh_from_db()
    assert second.status == "pending"
    client.post(
        changelist,
        {
            "action": "reject",
            "_selected_action": [second.pk],
            "apply": "1",
            "reason": "Billing contact is needed",
        },
    )
    second.refresh_from_db()
    assert (second.status, second.review_note) == ("rejected", "Billing contact is needed")
    # Approving asks for the reason first; nothing is deleted until it is given.
    asked = client.post(changelist, {"action": "approve", "_selected_action": [first.pk]})
    assert "Reason (kept in the audit log" in asked.content.decode()
    first.refresh_from_db()
    assert first.status == "pending"
    with committed():
        client.post(
            changelist,
            {
                "action": "approve",
                "_selected_action": [first.pk],
                "apply": "1",
                "reason": "Identity confirmed by phone",
            },
        )
    first.refresh_from_db()
    assert (first.status, first.reviewed_by) == ("done", ops)
    assert first.review_note == "Identity confirmed by phone"
    assert client.get("/admin/retention/deletionrecord/").status_code == 200
    # The requester sees both outcomes on Settings > Privacy.
    page = client_for(admin).get(privacy_url(org)).content.decode()
    assert "Billing contact is needed" in page
    assert "Rejected" in page
    assert "<li>memberships: 1</li>" in page


def test_the_only_admin_cannot_be_deleted(admin, org):
    with pytest.raises(ServiceError) as error:
        request_for(org, admin, admin)
    assert error.value.message == (
        "This is the organisation's only Admin. Make another user Admin first."
    )
    assert not DataDeletionRequest.objects.exists()


def test_the_catch_up_job_runs_requests_whose_task_never_ran(admin, member, org, ops):
    from datetime import timedelta

    deletion_request = request_for(org, admin, member)
    # Approved without running the on_commit task, as when the broker was down.
    deletion_request_approve(request=deletion_request, reviewer=Actor(user=ops), now=NOW)
    assert deletion_requests_execute_stuck(now=NOW, older_than=timedelta(minutes=10)) == 0
    later = NOW + timedelta(minutes=15)
    assert deletion_requests_execute_stuck(now=later, older_than=timedelta(minutes=10)) == 1
    deletion_request.refresh_from_db()
    assert (deletion_request.status, deletion_request.completed_at) == ("done", later)
    assert deletion_requests_execute_stuck(now=later, older_than=timedelta(minutes=10)) == 0


def test_a_request_is_possible_after_the_subscription_ended(client_for, admin, member, org):
    SubscriptionFactory(organisation=org, status="ended")
    response = client_for(admin).post(privacy_url(org), {"scope": "person", "subject": member.pk})
    assert response.status_code == 302
    assert DataDeletionRequest.objects.get().subject_user == member
