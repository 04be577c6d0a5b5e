"""Writes for organisations, memberships, invitations, the primary email and notifications.

Each service runs in one transaction, validates first, writes its audit row in the same
transaction and sends email after commit. Membership changes lock the organisation row, so
two Admins acting at once cannot both pass the "last active Admin" check.
"""

import secrets
from datetime import datetime, timedelta
from enum import StrEnum

from allauth.account.models import EmailAddress
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.text import slugify

from accounts.audit import Actor, audit_record, changes_between
from accounts.emails import email_send
from accounts.models import (
    Invitation,
    Membership,
    Organisation,
    PrimaryEmailChange,
    User,
    UserSession,
)
from accounts.tokens import new_token, token_digest
from core.errors import ServiceError
from core.links import absolute_url

ORGANISATION_NAME_MAX = 100


class LinkError(StrEnum):
    """Why an emailed link (invitation, email verification) was refused; the link pages map
    each to its status."""

    INVALID = "invalid"
    USED = "used"
    SUPERSEDED = "superseded"
    REVOKED = "revoked"
    EXPIRED = "expired"
    WRONG_USER = "wrong_user"
    DEACTIVATED = "deactivated"
    ACCOUNT_EXISTS = "account_exists"


def _normalise_email(email: str) -> str:
    return User.objects.normalize_email((email or "").strip()).lower()


def organisation_lock(organisation: Organisation) -> Organisation:
    """The organisation row, locked: the one mutex for changes across an organisation."""
    return Organisation.objects.select_for_update().get(pk=organisation.pk)


def user_lock(user: User) -> None:
    """Lock the user's row (inside a transaction): one change of how they sign in at a time."""
    User.objects.select_for_update().filter(pk=user.pk).first()


def _clean_organisation_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise ServiceError("Enter the organisation name.", field="name")
    if len(name) > ORGANISATION_NAME_MAX:
        raise ServiceError(
            f"The organisation name can be at most {ORGANISATION_NAME_MAX} characters "
            f"(it has {len(name)}).",
            field="name",
        )
    return name


# Organisations ---------------------------------------------------------------------------


def organisation_create(
    *,
    name: str,
    owner: User,
    now: datetime,
    time_zone: str = "UTC",
    currency: str = "USD",
    ip_address: str | None = None,
) -> Organisation:
    """Create an organisation whose first user, `owner`, is its Admin (sign-up)."""
    name = _clean_organisation_name(name)
    base = slugify(name)[:50].strip("-") or "organisation"
    with transaction.atomic():
        slug = base
        for _attempt in range(10):
            try:
                with transaction.atomic():
                    organisation = Organisation.objects.create(
                        name=name,
                        slug=slug,
                        primary_email=owner.email,
                        time_zone=time_zone,
                        currency=currency,
                        created_at=now,
                        created_by=owner,
                    )
                break
            except IntegrityError:
                slug = f"{base}-{secrets.token_hex(3)}"
        else:  # pragma: no cover - ten random suffixes colliding does not happen
            raise ServiceError("Could not create the organisation; please try again.")
        membership = Membership.objects.create(
            organisation=organisation, user=owner, role=Membership.Role.ADMIN, created_at=now
        )
        audit_record(
            organisation=organisation,
            actor=Actor(user=owner, ip_address=ip_address),
            action="organisation.created",
            target=organisation,
            changes={"name": {"old": None, "new": name}},
            now=now,
        )
        audit_record(
            organisation=organisation,
            actor=Actor(user=owner, ip_address=ip_address),
            action="member.added",
            target=membership,
            target_label=owner.email,
            changes={"role": {"old": None, "new": membership.role}},
            now=now,
        )
    return organisation


def organisation_update(
    *, organisation: Organisation, actor: Actor, name: str, time_zone: str, now: datetime
) -> Organisation:
    """Settings > Organisation: change the Organisation Name (and its time zone)."""
    name = _clean_organisation_name(name)
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        changes = changes_between(
            {"name": organisation.name, "time_zone": organisation.time_zone},
            {"name": name, "time_zone": time_zone},
        )
        if not changes:
            return organisation
        organisation.name = name
        organisation.time_zone = time_zone
        organisation.save(update_fields=["name", "time_zone"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="organisation.updated",
            target=organisation,
            changes=changes,
            now=now,
        )
    return organisation


def primary_email_change_request(
    *, organisation: Organisation, actor: Actor, new_email: str, now: datetime
) -> PrimaryEmailChange:
    """Send a verification link to `new_email`; the old address stays primary until it is used.

    A newer request replaces any pending one, whose link then stops working (article section 9).
    """
    new_email = _normalise_email(new_email)
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        if new_email == organisation.primary_email.lower():
            raise ServiceError("That is already the primary email address.", field="new_email")
        superseded = PrimaryEmailChange.objects.filter(
            organisation=organisation, status=PrimaryEmailChange.Status.PENDING
        ).update(status=PrimaryEmailChange.Status.SUPERSEDED)
        token, digest = new_token()
        change = PrimaryEmailChange.objects.create(
            organisation=organisation,
            old_email=organisation.primary_email,
            new_email=new_email,
            token_hash=digest,
            requested_by=actor.user,
            created_at=now,
            expires_at=now + timedelta(days=settings.PRIMARY_EMAIL_CHANGE_VALID_DAYS),
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="organisation.primary_email_change_requested",
            target=organisation,
            changes={"pending_primary_email": {"old": None, "new": new_email}},
            now=now,
        )
        context = {
            "change": change,
            "requested_by": actor.user,
            "verify_url": absolute_url("accounts:primary_email_verify", token),
            "valid_days": settings.PRIMARY_EMAIL_CHANGE_VALID_DAYS,
            "superseded": superseded,
        }
        email_send(
            template="primary_email_verify",
            to=new_email,
            context=context,
            organisation=organisation,
        )
        email_send(
            template="primary_email_change_requested",
            to=organisation.primary_email,
            context=context,
            organisation=organisation,
        )
    return change


def primary_email_change_check(*, token: str, now: datetime) -> PrimaryEmailChange:
    """The pending change behind a verification link, or a ServiceError saying why not."""
    change = (
        PrimaryEmailChange.objects.select_related("organisation")
        .filter(token_hash=token_digest(token))
        .first()
    )
    return _valid_primary_email_change(change, now=now)


def _valid_primary_email_change(change: PrimaryEmailChange | None, *, now: datetime):
    if change is None or change.organisation.status != Organisation.Status.ACTIVE:
        raise ServiceError("This verification link is not valid.", code=LinkError.INVALID)
    if change.status == PrimaryEmailChange.Status.VERIFIED:
        raise ServiceError(
            f"This link has already been used: {change.new_email} was verified on "
            f"{timezone.localtime(change.verified_at, change.organisation.tzinfo):%-d %b %Y}.",
            code=LinkError.USED,
        )
    if change.status == PrimaryEmailChange.Status.SUPERSEDED:
        raise ServiceError(
            "This link was replaced by a newer change of the primary email address. "
            "Use the link in the most recent email.",
            code=LinkError.SUPERSEDED,
        )
    if change.expires_at <= now:
        raise ServiceError(
            "This verification link has expired. Ask an Admin to request the change again "
            "in Settings > Organisation.",
            code=LinkError.EXPIRED,
        )
    return change


def primary_email_change_verify(*, token: str, actor: Actor, now: datetime) -> PrimaryEmailChange:
    """Make the new address primary. Single use: a second click or an older link is refused."""
    with transaction.atomic():
        change = (
            PrimaryEmailChange.objects.select_for_update(of=("self",))
            .select_related("organisation")
            .filter(token_hash=token_digest(token))
            .first()
        )
        change = _valid_primary_email_change(change, now=now)
        organisation = organisation_lock(change.organisation)
        old_email = organisation.primary_email
        organisation.primary_email = change.new_email
        organisation.save(update_fields=["primary_email"])
        change.status = PrimaryEmailChange.Status.VERIFIED
        change.verified_at = now
        change.save(update_fields=["status", "verified_at"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="organisation.primary_email_changed",
            target=organisation,
            changes={"primary_email": {"old": old_email, "new": change.new_email}},
            now=now,
        )
        email_send(
            template="primary_email_changed",
            to=old_email,
            context={"change": change},
            organisation=organisation,
        )
    return change


# Invitations -----------------------------------------------------------------------------


def _send_invitation(invitation: Invitation, token: str) -> None:
    email_send(
        template="invitation",
        to=invitation.email,
        context={
            "invitation": invitation,
            "accept_url": absolute_url("accounts:invitation_accept", token),
            "valid_days": settings.INVITATION_VALID_DAYS,
        },
        organisation=invitation.organisation,
    )


def invitation_create(
    *, organisation: Organisation, actor: Actor, email: str, role: str, now: datetime
) -> Invitation:
    """Invite User: email a link valid 7 days that adds the person with `role` (article 9)."""
    email = _normalise_email(email)
    if role not in Membership.Role.values:
        raise ServiceError("Choose a role.", field="role")
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        existing = (
            Membership.objects.filter(organisation=organisation, user__email__iexact=email)
            .only("status")
            .first()
        )
        if existing is not None:
            if existing.status == Membership.Status.DEACTIVATED:
                raise ServiceError(
                    f"{email} is already a user of this organisation but is deactivated. "
                    "Reactivate them from their page instead.",
                    field="email",
                )
            raise ServiceError(f"{email} is already a user of this organisation.", field="email")
        pending = Invitation.objects.filter(
            organisation=organisation, email__iexact=email, status=Invitation.Status.PENDING
        ).first()
        if pending is not None:
            if not pending.is_expired_at(now):
                raise ServiceError(
                    f"An invitation to {email} is already pending (sent "
                    f"{timezone.localtime(pending.last_sent_at, organisation.tzinfo):%-d %b %Y})."
                    " Resend it from the list of invitations.",
                    field="email",
                )
            pending.status = Invitation.Status.EXPIRED
            pending.closed_at = now
            pending.save(update_fields=["status", "closed_at"])
        token, digest = new_token()
        invitation = Invitation.objects.create(
            organisation=organisation,
            email=email,
            role=role,
            token_hash=digest,
            invited_by=actor.user,
            created_at=now,
            last_sent_at=now,
            expires_at=now + timedelta(days=settings.INVITATION_VALID_DAYS),
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="invitation.created",
            target=invitation,
            target_label=email,
            changes={"role": {"old": None, "new": role}},
            now=now,
        )
        _send_invitation(invitation, token)
    return invitation


def invitation_resend(*, invitation: Invitation, actor: Actor, now: datetime) -> Invitation:
    """Send a fresh link valid 7 more days; the previous link stops working."""
    with transaction.atomic():
        invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if invitation.status not in (Invitation.Status.PENDING, Invitation.Status.EXPIRED):
            raise ServiceError(
                f"This invitation was {invitation.get_status_display().lower()} and cannot be "
                "resent. Invite the person again."
            )
        if (
            invitation.status == Invitation.Status.EXPIRED
            and Invitation.objects.filter(
                organisation_id=invitation.organisation_id,
                email__iexact=invitation.email,
                status=Invitation.Status.PENDING,
            ).exists()
        ):
            raise ServiceError(f"A newer invitation to {invitation.email} is already pending.")
        token, digest = new_token()
        invitation.token_hash = digest
        invitation.status = Invitation.Status.PENDING
        invitation.closed_at = None
        invitation.expires_at = now + timedelta(days=settings.INVITATION_VALID_DAYS)
        invitation.sent_count = F("sent_count") + 1
        invitation.last_sent_at = now
        invitation.save(
            update_fields=[
                "token_hash",
                "status",
                "closed_at",
                "expires_at",
                "sent_count",
                "last_sent_at",
            ]
        )
        invitation.refresh_from_db()
        audit_record(
            organisation=invitation.organisation,
            actor=actor,
            action="invitation.resent",
            target=invitation,
            target_label=invitation.email,
            now=now,
        )
        _send_invitation(invitation, token)
    return invitation


def invitation_revoke(*, invitation: Invitation, actor: Actor, now: datetime) -> Invitation:
    with transaction.atomic():
        invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if invitation.status != Invitation.Status.PENDING:
            raise ServiceError(
                f"This invitation is already {invitation.get_status_display().lower()}."
            )
        invitation.status = Invitation.Status.REVOKED
        invitation.closed_at = now
        invitation.save(update_fields=["status", "closed_at"])
        audit_record(
            organisation=invitation.organisation,
            actor=actor,
            action="invitation.revoked",
            target=invitation,
            target_label=invitation.email,
            changes={"status": {"old": "pending", "new": "revoked"}},
            now=now,
        )
    return invitation


def _valid_invitation(invitation: Invitation | None, *, now: datetime) -> Invitation:
    if invitation is None or invitation.organisation.status != Organisation.Status.ACTIVE:
        raise ServiceError(
            "This invitation link is not valid. Ask your administrator to send a new one.",
            code=LinkError.INVALID,
        )
    if invitation.status == Invitation.Status.ACCEPTED:
        raise ServiceError(
            "This invitation has already been used. Sign in to reach "
            f"{invitation.organisation.name}.",
            code=LinkError.USED,
        )
    if invitation.status == Invitation.Status.REVOKED:
        raise ServiceError(
            f"This invitation to {invitation.organisation.name} was revoked. Ask your "
            "administrator if you still need access.",
            code=LinkError.REVOKED,
        )
    if invitation.status == Invitation.Status.EXPIRED or invitation.is_expired_at(now):
        # The organisation's clock, as the invitation email gave the end of its validity.
        expired = timezone.localtime(invitation.expires_at, invitation.organisation.tzinfo)
        raise ServiceError(
            f"This invitation expired on {expired:%-d %b %Y, %H:%M %Z}. Ask your "
            "administrator to resend it.",
            code=LinkError.EXPIRED,
        )
    return invitation


def invitation_check(*, token: str, now: datetime) -> Invitation:
    """The pending invitation behind an emailed link, or a ServiceError saying why not."""
    invitation = (
        Invitation.objects.select_related("organisation", "invited_by")
        .filter(token_hash=token_digest(token))
        .first()
    )
    return _valid_invitation(invitation, now=now)


def invitation_accept(
    *, token: str, user: User, ip_address: str | None, now: datetime
) -> Membership:
    """Attach a signed-in user to the organisation with the invited role. The link is single use."""
    with transaction.atomic():
        invitation = (
            Invitation.objects.select_for_update(of=("self",))
            .select_related("organisation")
            .filter(token_hash=token_digest(token))
            .first()
        )
        invitation = _valid_invitation(invitation, now=now)
        if user.email.lower() != invitation.email.lower():
            raise ServiceError(
                f"This invitation was sent to {invitation.email}, but you are signed in as "
                f"{user.email}. Sign out, then open the link again.",
                code=LinkError.WRONG_USER,
            )
        return _invitation_accept_locked(invitation, user=user, ip_address=ip_address, now=now)


def invitation_accept_by_email(
    *, organisation: Organisation, user: User, ip_address: str | None, now: datetime
) -> Membership | None:
    """Accept the organisation's pending invitation to `user`'s address, if there is one.

    For a sign-in through the organisation's IdP, which proves the address as the link does.
    """
    with transaction.atomic():
        invitation = (
            Invitation.objects.select_for_update(of=("self",))
            .select_related("organisation")
            .filter(
                organisation=organisation,
                email__iexact=user.email,
                status=Invitation.Status.PENDING,
                expires_at__gt=now,
            )
            .order_by("-created_at")
            .first()
        )
        if invitation is None:
            return None
        return _invitation_accept_locked(invitation, user=user, ip_address=ip_address, now=now)


def _invitation_accept_locked(
    invitation: Invitation, *, user: User, ip_address: str | None, now: datetime
) -> Membership:
    """Accept a valid, locked invitation for `user` (inside the caller's transaction)."""
    with transaction.atomic():
        organisation = organisation_lock(invitation.organisation)
        membership, created = Membership.objects.get_or_create(
            organisation=organisation,
            user=user,
            defaults={"role": invitation.role, "created_at": now},
        )
        if not created and membership.status != Membership.Status.ACTIVE:
            raise ServiceError(
                f"Your access to {organisation.name} is deactivated; an Admin can reactivate you.",
                code=LinkError.DEACTIVATED,
            )
        invitation.status = Invitation.Status.ACCEPTED
        invitation.accepted_at = now
        invitation.accepted_by = user
        invitation.closed_at = now
        invitation.save(update_fields=["status", "accepted_at", "accepted_by", "closed_at"])
        # Opening the emailed link proves the address, so it counts as verified.
        EmailAddress.objects.filter(user=user, email__iexact=user.email).update(verified=True)
        actor = Actor(user=user, ip_address=ip_address)
        audit_record(
            organisation=organisation,
            actor=actor,
            action="invitation.accepted",
            target=invitation,
            target_label=invitation.email,
            now=now,
        )
        if created:
            audit_record(
                organisation=organisation,
                actor=actor,
                action="member.added",
                target=membership,
                target_label=user.email,
                changes={"role": {"old": None, "new": membership.role}},
                now=now,
            )
    return membership


def invitation_accept_new_account(
    *, token: str, full_name: str, password: str, ip_address: str | None, now: datetime
) -> Membership:
    """Accept an invitation by creating the account for the invited address."""
    with transaction.atomic():
        # Lock the invitation first: two submissions of the same form create one account.
        invitation = (
            Invitation.objects.select_for_update(of=("self",))
            .select_related("organisation")
            .filter(token_hash=token_digest(token))
            .first()
        )
        invitation = _valid_invitation(invitation, now=now)
        if User.objects.filter(email__iexact=invitation.email).exists():
            raise ServiceError(
                f"An account for {invitation.email} already exists. Sign in to accept.",
                code=LinkError.ACCOUNT_EXISTS,
            )
        user = User.objects.create_user(
            email=invitation.email, password=password, full_name=full_name.strip(), date_joined=now
        )
        EmailAddress.objects.create(user=user, email=user.email, primary=True, verified=True)
        return invitation_accept(token=token, user=user, ip_address=ip_address, now=now)


def invitation_expire_due(*, now: datetime) -> int:
    """Mark pending invitations past their expiry as expired (a scheduled job; idempotent)."""
    return Invitation.objects.filter(status=Invitation.Status.PENDING, expires_at__lte=now).update(
        status=Invitation.Status.EXPIRED, closed_at=now
    )


# Memberships -----------------------------------------------------------------------------


def user_end_sessions(*, user: User) -> None:
    """Sign the user out of every session at once: their session rows go (and leave the
    Security page's list), and bumping session_epoch, which the session hash includes, ends
    any session row this misses."""
    UserSession.objects.filter(user=user).delete()
    User.objects.filter(pk=user.pk).update(session_epoch=F("session_epoch") + 1)


def _lock_membership(membership: Membership) -> tuple[Organisation, Membership]:
    organisation = organisation_lock(membership.organisation)
    membership = Membership.objects.select_related("user").get(pk=membership.pk)
    return organisation, membership


def _ensure_not_last_admin(membership: Membership, *, doing: str) -> None:
    if membership.role != Membership.Role.ADMIN or membership.status != Membership.Status.ACTIVE:
        return
    other_admins = (
        Membership.objects.filter(
            organisation_id=membership.organisation_id,
            role=Membership.Role.ADMIN,
            status=Membership.Status.ACTIVE,
        )
        .exclude(pk=membership.pk)
        .exists()
    )
    if not other_admins:
        raise ServiceError(
            f"{membership.user.display_name} is the last active Admin and cannot be {doing}. "
            "Make another user an Admin first."
        )


def membership_change_role(
    *, membership: Membership, actor: Actor, role: str, now: datetime
) -> Membership:
    if role not in Membership.Role.values:
        raise ServiceError("Choose a role.", field="role")
    with transaction.atomic():
        organisation, membership = _lock_membership(membership)
        if membership.role == role:
            return membership
        if role != Membership.Role.ADMIN:
            _ensure_not_last_admin(membership, doing="demoted")
        old = membership.role
        membership.role = role
        membership.save(update_fields=["role"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="member.role_changed",
            target=membership,
            target_label=membership.user.email,
            changes={"role": {"old": old, "new": role}},
            now=now,
        )
    return membership


def membership_deactivate(*, membership: Membership, actor: Actor, now: datetime) -> Membership:
    """Deactivate (reversible): the user loses access at once and is signed out everywhere."""
    with transaction.atomic():
        organisation, membership = _lock_membership(membership)
        if membership.status == Membership.Status.DEACTIVATED:
            raise ServiceError(f"{membership.user.display_name} is already deactivated.")
        _ensure_not_last_admin(membership, doing="deactivated")
        membership.status = Membership.Status.DEACTIVATED
        membership.deactivated_at = now
        membership.save(update_fields=["status", "deactivated_at"])
        user_end_sessions(user=membership.user)
        audit_record(
            organisation=organisation,
            actor=actor,
            action="member.deactivated",
            target=membership,
            target_label=membership.user.email,
            changes={"status": {"old": "active", "new": "deactivated"}},
            now=now,
        )
    return membership


def membership_reactivate(*, membership: Membership, actor: Actor, now: datetime) -> Membership:
    with transaction.atomic():
        organisation, membership = _lock_membership(membership)
        if membership.status == Membership.Status.ACTIVE:
            raise ServiceError(f"{membership.user.display_name} is already active.")
        membership.status = Membership.Status.ACTIVE
        membership.deactivated_at = None
        membership.save(update_fields=["status", "deactivated_at"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="member.reactivated",
            target=membership,
            target_label=membership.user.email,
            changes={"status": {"old": "deactivated", "new": "active"}},
            now=now,
        )
    return membership


def membership_remove(*, membership: Membership, actor: Actor, now: datetime) -> None:
    """Remove User: access ends at once; the audit trail keeps naming them (article section 9)."""
    with transaction.atomic():
        organisation, membership = _lock_membership(membership)
        _ensure_not_last_admin(membership, doing="removed")
        user = membership.user
        audit_record(
            organisation=organisation,
            actor=actor,
            action="member.removed",
            target=membership,
            target_label=user.email,
            changes={"role": {"old": membership.role, "new": None}},
            now=now,
        )
        membership.delete()
        user_end_sessions(user=user)


# Notifications ---------------------------------------------------------------------------


def notifications_mark_seen(*, membership: Membership, now: datetime) -> None:
    """Opening the Notifications page reads everything that arrived until `now`.

    One conditional UPDATE: a slower request that started earlier never moves the mark back.
    Not a change of Settings, so no audit row."""
    Membership.objects.filter(pk=membership.pk).filter(
        Q(notifications_seen_at__isnull=True) | Q(notifications_seen_at__lt=now)
    ).update(notifications_seen_at=now)
    membership.notifications_seen_at = now
