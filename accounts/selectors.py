"""Reads, always scoped to an organisation (or to the signed-in user's own rows)."""

from django.db.models import QuerySet
from django.http import Http404

from accounts.models import AuditEvent, Invitation, Membership, Organisation, User


def membership_for_user(*, user: User, org_slug: str) -> Membership:
    """The user's active membership in the organisation `org_slug`, or 404."""
    membership = (
        Membership.objects.select_related("organisation")
        .filter(
            user=user,
            organisation__slug=org_slug,
            organisation__status=Organisation.Status.ACTIVE,
            status=Membership.Status.ACTIVE,
        )
        .first()
    )
    if membership is None:
        raise Http404("No such organisation.")
    return membership


def memberships_of_user(*, user: User) -> QuerySet[Membership]:
    return (
        Membership.objects.select_related("organisation")
        .filter(
            user=user,
            status=Membership.Status.ACTIVE,
            organisation__status=Organisation.Status.ACTIVE,
        )
        .order_by("organisation__name", "organisation__pk")
    )


def membership_list(*, organisation: Organisation) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organisation=organisation)
        .select_related("user")
        .order_by("status", "user__full_name", "user__email")
    )


def membership_get(*, organisation: Organisation, public_id) -> Membership:
    membership = (
        Membership.objects.select_related("user", "organisation")
        .filter(organisation=organisation, public_id=public_id)
        .first()
    )
    if membership is None:
        raise Http404("No such user in this organisation.")
    return membership


def invitation_list_pending(*, organisation: Organisation) -> QuerySet[Invitation]:
    return (
        Invitation.objects.filter(organisation=organisation, status=Invitation.Status.PENDING)
        .select_related("invited_by")
        .order_by("-created_at")
    )


def invitation_get(*, organisation: Organisation, public_id) -> Invitation:
    invitation = Invitation.objects.filter(organisation=organisation, public_id=public_id).first()
    if invitation is None:
        raise Http404("No such invitation.")
    return invitation


def audit_event_list(*, organisation: Organisation) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(organisation=organisation).order_by("-created_at", "-id")


def billing_recipients(*, organisation: Organisation) -> list[str]:
    """Who gets billing and subscription emails: the primary email, then the active Admins and
    Billing contacts, each address once."""
    emails = Membership.objects.filter(
        organisation=organisation,
        status=Membership.Status.ACTIVE,
        role__in=[Membership.Role.ADMIN, Membership.Role.BILLING],
    ).values_list("user__email", flat=True)
    ordered = [organisation.primary_email, *sorted(emails)]
    return list(dict.fromkeys(email.lower() for email in ordered if email))
