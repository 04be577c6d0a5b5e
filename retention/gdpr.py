"""GDPR data deletion requests (article section 12).

Settings > Privacy > Data Deletion Request creates a request; ops approve or reject it in
Django admin (retention.gdpr_review); approval queues the deletion (retention.tasks), which
runs once here and records what it deleted.

Allowed transitions, written down in one place:

    pending  -> approved   (ops approve; the deletion is queued after commit)
    pending  -> rejected   (ops reject, with a note the requester sees)
    approved -> done       (the deletion ran; `record` says what it removed)
"""

import json
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils.crypto import salted_hmac

from accounts.audit import Actor, audit_record
from accounts.emails import email_send
from accounts.models import (
    AuditEvent,
    Invitation,
    KnownBrowser,
    Membership,
    Organisation,
    OutgoingEmail,
    User,
)
from accounts.services import user_end_sessions
from core.errors import ServiceError
from core.links import absolute_url
from retention.deletion import DeletionError, organisation_data_delete
from retention.models import DataDeletionRequest, DeletionRecord
from sso.models import SsoAttempt
from support.models import SupportTicket, TicketMessage

Status = DataDeletionRequest.Status
Scope = DataDeletionRequest.Scope

TRANSITIONS = {
    Status.PENDING: {Status.APPROVED, Status.REJECTED},
    Status.APPROVED: {Status.DONE},
    Status.REJECTED: set(),
    Status.DONE: set(),
}

_REFUSED = {
    Status.APPROVED: "This request is already approved; the deletion is running.",
    Status.REJECTED: "This request was already rejected.",
    Status.DONE: "This request was already executed.",
}


def transition_ensure(request: DataDeletionRequest, to: str) -> None:
    if to not in TRANSITIONS[request.status]:
        raise ServiceError(_REFUSED.get(request.status, "This request cannot change now."))


def _privacy_url(organisation: Organisation) -> str:
    return absolute_url("retention:privacy", organisation.slug)


def _requester_email(request: DataDeletionRequest) -> str:
    # Set by each service from the email recorded when the request was made: for the
    # organisation scope the audit trail (and memberships) are gone by the time it is done.
    return getattr(request, "requested_by_email", "")


def requester_notify(request: DataDeletionRequest, template: str) -> None:
    to = _requester_email(request)
    if to:
        email_send(
            template=template,
            to=to,
            context={
                "deletion_request": request,
                "privacy_url": _privacy_url(request.organisation),
            },
            organisation=request.organisation,
        )


def requester_email_at_request(request: DataDeletionRequest) -> str:
    """The requester's email as the audit row of the request recorded it (their account may
    be anonymised since); falls back to the account's current email."""
    row = (
        AuditEvent.objects.filter(
            organisation=request.organisation,
            action="deletion_request.created",
            target_type=DataDeletionRequest._meta.label,
            target_id=str(request.pk),
        )
        .values_list("actor_email", flat=True)
        .first()
    )
    if row:
        return row
    return request.requested_by.email if request.requested_by else ""


def deletion_request_execute(*, request_id: int, now: datetime) -> DataDeletionRequest | None:
    """Run an approved request's deletion once; safe to run twice.

    Person scope: the row is claimed under a lock and moves approved -> done in the same
    transaction as the deletion. Organisation scope: the deletion commits in small batches and
    resumes where a crashed run stopped (retention/deletion.py), so it runs before the claim;
    a rerun after it finished is refused there as "already deleted" and reuses its record.
    """
    pending = (
        DataDeletionRequest.objects.select_related("organisation", "requested_by", "reviewed_by")
        .filter(pk=request_id, status=Status.APPROVED)
        .first()
    )
    if pending is None:
        return None
    # Read before the deletion: the organisation scope removes the audit trail.
    requester_email = requester_email_at_request(pending)
    record = None
    if pending.scope == Scope.ORGANISATION:
        record = _organisation_delete(pending, now=now)
    with transaction.atomic():
        request = (
            DataDeletionRequest.objects.select_for_update(of=["self"])
            .select_related("organisation", "subject_user", "requested_by", "reviewed_by")
            .filter(pk=request_id, status=Status.APPROVED)
            .first()
        )
        if request is None:
            return None
        if request.scope == Scope.PERSON:
            record = _person_delete(request, now=now)
        transition_ensure(request, Status.DONE)
        request.status = Status.DONE
        request.completed_at = now
        request.record = record
        # The email stays out of the request once the person's data is gone.
        if request.subject_user is not None:
            request.subject_email = _pseudonym_for(request.subject_user)
        request.save(update_fields=["status", "completed_at", "record", "subject_email"])
        request.requested_by_email = requester_email
        requester_notify(request, "deletion_request_done")
    return request


def _person_delete(request: DataDeletionRequest, *, now: datetime) -> DeletionRecord:
    actor = Actor(user=request.reviewed_by)
    if request.subject_user is not None:
        return person_data_delete(
            organisation=request.organisation, user=request.subject_user, actor=actor, now=now
        )
    # The account was deleted meanwhile; record that nothing was left to delete.
    return DeletionRecord.objects.create(
        organisation=request.organisation,
        organisation_label=request.organisation.name,
        kind=DeletionRecord.Kind.GDPR_PERSON,
        counts={},
        detail="The person's account no longer existed.",
        actor=actor.user,
        created_at=now,
    )


def _organisation_delete(request: DataDeletionRequest, *, now: datetime) -> DeletionRecord:
    organisation = request.organisation
    try:
        return organisation_data_delete(
            organisation=organisation,
            kind=DeletionRecord.Kind.GDPR_ORGANISATION,
            actor=Actor(user=request.reviewed_by),
            now=now,
            detail=f"GDPR data deletion request {request.pk}",
        )
    except ServiceError as error:
        if error.code != DeletionError.ALREADY_DELETED:
            raise
        # An earlier run (or the cancellation deletion) finished it: link the record it left.
        return (
            DeletionRecord.objects.filter(organisation=organisation, counts__completed=True)
            .order_by("-created_at", "-pk")
            .first()
        )


# Deleting one person's data ---------------------------------------------------------------


def _pseudonym_for(user: User) -> str:
    # Stable per user, so every trace of the same person reads the same; not reversible.
    digest = salted_hmac("retention.gdpr.pseudonym", str(user.pk), algorithm="sha256")
    return f"deleted-user-{digest.hexdigest()[:6]}"


def _replace_in(value, needles: list[str], pseudonym: str):
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    for needle in needles:
        # Case-insensitive replace of every occurrence.
        lowered = text.lower()
        start = lowered.find(needle.lower())
        while start != -1:
            text = text[:start] + pseudonym + text[start + len(needle) :]
            lowered = text.lower()
            start = lowered.find(needle.lower(), start + len(pseudonym))
    if isinstance(value, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        # A name with characters JSON escapes; keep the structure, the label is replaced.
        return value


def person_data_delete(
    *, organisation: Organisation, user: User, actor: Actor, now: datetime
) -> DeletionRecord:
    """Delete one person's personal data in one organisation (GDPR, article section 12).

    Their membership goes; this organisation's audit rows stay but name a pseudonym instead of
    them; their pending invitations and the emails sent to them here are deleted. If they
    belong to no other organisation the account itself is anonymised and signed out.
    """
    pseudonym = _pseudonym_for(user)
    email = user.email
    needles = [email] + ([user.full_name] if len(user.full_name.strip()) >= 3 else [])
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user.pk)
        counts: dict[str, int] = {}
        counts["memberships"], _ = Membership.objects.filter(
            organisation=organisation, user=user
        ).delete()
        counts["audit_events_pseudonymised"] = _audit_events_pseudonymise(
            organisation, user, email=email, needles=needles, pseudonym=pseudonym
        )
        counts["invitations"], _ = Invitation.objects.filter(
            organisation=organisation, email__iexact=email, status=Invitation.Status.PENDING
        ).delete()
        counts["outgoing_emails"], _ = OutgoingEmail.objects.filter(
            organisation=organisation, to_email__iexact=email
        ).delete()
        # What their IdP said about them at sign-in (email, name, attributes) goes too.
        counts["sso_attempts"], _ = SsoAttempt.objects.filter(
            Q(user=user) | Q(email__iexact=email), organisation=organisation
        ).delete()
        counts["support_tickets_pseudonymised"] = _support_pseudonymise(
            organisation, user, email=email, pseudonym=pseudonym
        )
        counts["accounts_anonymised"] = 0
        if not Membership.objects.filter(user=user).exists():
            counts["email_addresses"] = _account_anonymise(user, pseudonym=pseudonym)
            counts["accounts_anonymised"] = 1
        audit_record(
            organisation=organisation,
            actor=actor,
            action="gdpr.person_deleted",
            now=now,
            target_label=pseudonym,
            changes={"counts": {"old": None, "new": counts}},
        )
        return DeletionRecord.objects.create(
            organisation=organisation,
            organisation_label=organisation.name,
            kind=DeletionRecord.Kind.GDPR_PERSON,
            counts=counts,
            detail=f"Personal data of {pseudonym}",
            actor=actor.user,
            created_at=now,
        )


def _audit_events_pseudonymise(
    organisation: Organisation, user: User, *, email: str, needles: list[str], pseudonym: str
) -> int:
    """The organisation's audit rows by or naming the person (`needles`: their email, then
    their name when there is one) name the pseudonym instead; returns how many."""
    match = Q(actor=user) | Q(actor_email__iexact=email) | Q(target_label__icontains=email)
    if len(needles) > 1:
        match |= Q(target_label__icontains=needles[1])
    events = list(AuditEvent.objects.filter(Q(organisation=organisation) & match))
    for event in events:
        if event.actor_id == user.pk or event.actor_email.lower() == email.lower():
            event.actor = None
            event.actor_email = pseudonym
        event.target_label = _replace_in(event.target_label, needles, pseudonym)[:254]
        event.changes = _replace_in(event.changes, needles, pseudonym)
    AuditEvent.objects.bulk_update(events, ["actor", "actor_email", "target_label", "changes"])
    return len(events)


def _support_pseudonymise(
    organisation: Organisation, user: User, *, email: str, pseudonym: str
) -> int:
    """Support tickets stay (the organisation's records) but no longer name the person;
    returns how many tickets."""
    tickets = SupportTicket.objects.filter(
        Q(created_by=user) | Q(contact_email__iexact=email), organisation=organisation
    ).update(contact_email=f"{pseudonym}@deleted.invalid")
    TicketMessage.objects.filter(organisation=organisation, author=user).update(
        author_name=pseudonym
    )
    return tickets


def _account_anonymise(user: User, *, pseudonym: str) -> int:
    """Anonymise the (locked) account of a person left in no organisation and sign it out;
    returns how many email addresses were deleted."""
    from allauth.account.models import EmailAddress

    deleted, _ = EmailAddress.objects.filter(user=user).delete()
    user.email = f"{pseudonym}@deleted.invalid"
    user.full_name = ""
    user.is_active = False
    user.set_unusable_password()
    user.save(update_fields=["email", "full_name", "is_active", "password"])
    # Ends every session (the session hash includes the epoch and the password), and forgets
    # the browsers of sign-in notices.
    user_end_sessions(user=user)
    KnownBrowser.objects.filter(user=user).delete()
    return deleted


def deletion_requests_execute_stuck(*, now: datetime, older_than: timedelta) -> int:
    """Run approved requests whose task never ran (broker down when they were approved)."""
    ids = list(
        DataDeletionRequest.objects.filter(
            status=Status.APPROVED, reviewed_at__lte=now - older_than
        )
        .order_by("reviewed_at")
        .values_list("pk", flat=True)[:50]
    )
    return sum(deletion_request_execute(request_id=pk, now=now) is not None for pk in ids)
