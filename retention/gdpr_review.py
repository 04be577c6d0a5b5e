"""GDPR data deletion requests, the asking and the review (article section 12).

Settings > Privacy > Data Deletion Request creates a request; ops approve or reject it in
Django admin; approval queues the deletion (retention.tasks), which runs
retention.gdpr.deletion_request_execute once. The transitions are in retention.gdpr.
"""

from datetime import datetime

from django.db import IntegrityError, transaction

from accounts.audit import Actor, audit_record
from accounts.models import Membership, Organisation, User
from core.errors import ServiceError
from core.queueing import enqueue
from retention.gdpr import (
    Scope,
    Status,
    requester_email_at_request,
    requester_notify,
    transition_ensure,
)
from retention.models import DataDeletionRequest
from retention.tasks import execute_deletion_request


def _lock_request(request: DataDeletionRequest) -> DataDeletionRequest:
    return (
        DataDeletionRequest.objects.select_for_update(of=["self"])
        .select_related("organisation", "subject_user", "requested_by")
        .get(pk=request.pk)
    )


def _is_last_active_admin(*, organisation: Organisation, user: User) -> bool:
    admins = Membership.objects.filter(
        organisation=organisation, role=Membership.Role.ADMIN, status=Membership.Status.ACTIVE
    )
    return admins.filter(user=user).exists() and admins.count() == 1


def deletion_request_create(
    *,
    organisation: Organisation,
    actor: Actor,
    scope: str,
    subject_user: User | None = None,
    reason: str = "",
    now: datetime,
) -> DataDeletionRequest:
    """An Admin asks for one person's personal data, or all the organisation's data, to be
    deleted (article section 12). One open request per subject: the unique constraint on open
    requests backs the check against two clicks at once."""
    if scope not in Scope.values:
        raise ServiceError("Choose what to delete.", field="scope")
    subject_user, subject_email = _deletion_subject(organisation, scope, subject_user)
    open_requests = DataDeletionRequest.objects.filter(
        organisation=organisation, status__in=[Status.PENDING, Status.APPROVED]
    )
    if scope == Scope.ORGANISATION and open_requests.filter(scope=Scope.ORGANISATION).exists():
        raise ServiceError(
            "A request to delete all of the organisation's data is already open.", field="scope"
        )
    duplicate = ServiceError(
        f"A deletion request for {subject_email} is already open."
        if subject_email
        else "A request to delete all of the organisation's data is already open.",
        field="subject" if subject_email else "scope",
    )
    if open_requests.filter(scope=scope, subject_email=subject_email).exists():
        raise duplicate
    try:
        with transaction.atomic():
            request = DataDeletionRequest.objects.create(
                organisation=organisation,
                scope=scope,
                subject_user=subject_user,
                subject_email=subject_email,
                reason=reason.strip(),
                requested_by=actor.user,
                requested_at=now,
            )
            request.requested_by_email = actor.email
            audit_record(
                organisation=organisation,
                actor=actor,
                action="deletion_request.created",
                now=now,
                target=request,
                target_label=subject_email or "All organisation data",
                changes={"scope": {"old": None, "new": scope}},
            )
            requester_notify(request, "deletion_request_received")
    except IntegrityError as error:
        raise duplicate from error
    return request


def _deletion_subject(
    organisation: Organisation, scope: str, subject_user: User | None
) -> tuple[User | None, str]:
    """The person whose data a request deletes and their email (none for the organisation
    scope): a user of the organisation, never its only active Admin."""
    if scope != Scope.PERSON:
        return None, ""
    if subject_user is None:
        raise ServiceError("Choose the person whose data is deleted.", field="subject")
    if not Membership.objects.filter(organisation=organisation, user=subject_user).exists():
        raise ServiceError("That person is not a user of this organisation.", field="subject")
    if _is_last_active_admin(organisation=organisation, user=subject_user):
        raise ServiceError(
            "This is the organisation's only Admin. Make another user Admin first.",
            field="subject",
        )
    return subject_user, subject_user.email.lower()


def _reviewed(
    *, request: DataDeletionRequest, reviewer: Actor, note: str, now: datetime, to: str
) -> DataDeletionRequest:
    request = _lock_request(request)
    transition_ensure(request, to)
    old = request.status
    request.status = to
    request.reviewed_by = reviewer.user
    request.reviewed_at = now
    request.review_note = note.strip()
    request.save(update_fields=["status", "reviewed_by", "reviewed_at", "review_note"])
    request.requested_by_email = requester_email_at_request(request)
    audit_record(
        organisation=request.organisation,
        actor=reviewer,
        action=f"deletion_request.{to}",
        now=now,
        target=request,
        target_label=request.subject_email or "All organisation data",
        changes={"status": {"old": old, "new": to}},
    )
    return request


def deletion_request_approve(
    *, request: DataDeletionRequest, reviewer: Actor, note: str = "", now: datetime
) -> DataDeletionRequest:
    """Ops approve a pending request; the deletion runs in a task queued after commit."""
    with transaction.atomic():
        request = _reviewed(
            request=request, reviewer=reviewer, note=note, now=now, to=Status.APPROVED
        )
        subject = request.subject_user
        if (
            request.scope == Scope.PERSON
            and subject is not None
            and _is_last_active_admin(organisation=request.organisation, user=subject)
        ):
            raise ServiceError(
                "This person is now the organisation's only Admin; the deletion would leave "
                "it without one."
            )
        requester_notify(request, "deletion_request_approved")
        request_id = request.pk
        transaction.on_commit(
            lambda: enqueue(
                execute_deletion_request, request_id, catch_up="gdpr_deletion_requests_catch_up"
            )
        )
    return request


def deletion_request_reject(
    *, request: DataDeletionRequest, reviewer: Actor, note: str, now: datetime
) -> DataDeletionRequest:
    """Ops reject a pending request; the requester is told why, so a note is required."""
    if not note.strip():
        raise ServiceError("Give the reason for rejecting the request.", field="review_note")
    with transaction.atomic():
        request = _reviewed(
            request=request, reviewer=reviewer, note=note, now=now, to=Status.REJECTED
        )
        requester_notify(request, "deletion_request_rejected")
    return request
