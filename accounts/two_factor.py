"""Two-factor sign-in on allauth.mfa: who has it, and the record of every change
(docs/architecture.md#decision-two-factor-sign-in-builds-on-allauth-mfa).

allauth.mfa owns the secrets, the codes and the sign-in stage. We add what a customer and ops
expect around it: an audit row in each organisation of the user and an email for every change,
one authenticator app however many tabs confirm, and the ops reset.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal import flows as totp_flows
from django.db import IntegrityError, transaction

from accounts.audit import Actor, audit_record, reason_change
from accounts.emails import email_send
from accounts.models import Membership, Organisation, User
from accounts.selectors import second_factors
from accounts.services import user_end_sessions, user_lock
from core.errors import ServiceError


class Change(StrEnum):
    """A change to a user's second factors, as its audit action."""

    APP_ADDED = "two_factor.app_added"
    APP_REMOVED = "two_factor.app_removed"
    RECOVERY_CODES_REGENERATED = "two_factor.recovery_codes_regenerated"
    KEY_ADDED = "two_factor.security_key_added"
    KEY_REMOVED = "two_factor.security_key_removed"
    RESET_BY_OPS = "two_factor.reset_by_support"


# What the email says happened, per change.
CHANGE_TEXT = {
    Change.APP_ADDED: "An authenticator app was added to your account",
    Change.APP_REMOVED: "The authenticator app was removed from your account",
    Change.RECOVERY_CODES_REGENERATED: "New recovery codes were generated for your account",
    Change.KEY_ADDED: "A security key was added to your account",
    Change.KEY_REMOVED: "A security key was removed from your account",
    Change.RESET_BY_OPS: "Support reset your two-factor sign-in",
}

# allauth.mfa's notification emails, and the change each one reports. allauth sends exactly one
# per change (the recovery codes made with a first authenticator send none), so routing them
# here gives one audit row and one email per change (accounts.adapters.AccountAdapter).
ALLAUTH_NOTIFICATIONS = {
    "mfa/email/totp_activated": Change.APP_ADDED,
    "mfa/email/totp_deactivated": Change.APP_REMOVED,
    "mfa/email/recovery_codes_generated": Change.RECOVERY_CODES_REGENERATED,
    "mfa/email/webauthn_added": Change.KEY_ADDED,
    "mfa/email/webauthn_removed": Change.KEY_REMOVED,
}


class TwoFactorError(StrEnum):
    ALREADY_ACTIVE = "already_active"


@dataclass(frozen=True)
class TwoFactorStatus:
    """What Security and the ops user page show: facts, never a secret."""

    has_app: bool
    security_keys: int
    recovery_codes_left: int

    @property
    def enabled(self) -> bool:
        return self.has_app or self.security_keys > 0

    def __str__(self) -> str:
        if not self.enabled:
            return "2FA: off"
        parts = []
        if self.has_app:
            parts.append("authenticator app")
        if self.security_keys:
            parts.append(f"{self.security_keys} security key(s)")
        parts.append(f"{self.recovery_codes_left} recovery codes left")
        return f"2FA: on ({', '.join(parts)})"


def has_two_factor(user: User) -> bool:
    """Whether the user has a second factor (an app or a security key; recovery codes only back
    one up). One query."""
    return user.is_authenticated and second_factors(user).exists()


def two_factor_status(*, user: User) -> TwoFactorStatus:
    """The user's second factors, read in one query."""
    has_app = False
    keys = 0
    codes_left = 0
    for authenticator in Authenticator.objects.filter(user_id=user.pk):
        if authenticator.type == Authenticator.Type.TOTP:
            has_app = True
        elif authenticator.type == Authenticator.Type.WEBAUTHN:
            keys += 1
        elif authenticator.type == Authenticator.Type.RECOVERY_CODES:
            codes_left = len(authenticator.wrap().get_unused_codes())
    return TwoFactorStatus(has_app=has_app, security_keys=keys, recovery_codes_left=codes_left)


def two_factor_record(
    *, user: User, change: Change, actor: Actor, now: datetime, reason: str = ""
) -> None:
    """Audit `change` in every organisation the user is an active member of (each
    organisation's Admins see who in it changed how they sign in), and email the user."""
    organisation_ids = Membership.objects.filter(
        user=user,
        status=Membership.Status.ACTIVE,
        organisation__status=Organisation.Status.ACTIVE,
    ).values_list("organisation_id", flat=True)
    with transaction.atomic():
        for organisation in Organisation.objects.filter(pk__in=list(organisation_ids)):
            audit_record(
                organisation=organisation,
                actor=actor,
                action=change.value,
                now=now,
                target=user,
                target_label=user.email,
                changes=reason_change(reason),
            )
        email_send(
            template="two_factor_changed",
            to=user.email,
            context={
                "user": user,
                "change_text": CHANGE_TEXT[change],
                "by_support": change == Change.RESET_BY_OPS,
                "when": now,
                "ip_address": actor.ip_address or "",
            },
        )


def totp_activate(request, form) -> None:
    """Confirm the authenticator app of the form's secret: one per user, however many tabs
    confirm at once. The user row is locked first, so a second confirmation waits for the
    first, then finds the app and is refused with a message (allauth's unique constraint on
    (user, type) would otherwise surface as an error page)."""
    user = request.user
    try:
        with transaction.atomic():
            user_lock(user)
            if Authenticator.objects.filter(user_id=user.pk, type=Authenticator.Type.TOTP).exists():
                raise ServiceError(
                    "An authenticator app is already set up for your account.",
                    code=TwoFactorError.ALREADY_ACTIVE,
                )
            totp_flows.activate_totp(request, form)
    except IntegrityError as error:
        raise ServiceError(
            "An authenticator app is already set up for your account.",
            code=TwoFactorError.ALREADY_ACTIVE,
        ) from error


def two_factor_reset(*, user: User, actor: Actor, reason: str, now: datetime) -> int:
    """Ops remove every second factor of a user who lost them, with a reason: the user signs
    in with the password alone and sets up again; every session of theirs ends, so whoever might
    hold one must sign in again. Returns how many authenticators were removed."""
    reason = reason.strip()
    if not reason:
        raise ServiceError("Give a reason: it is kept in the audit log.")
    with transaction.atomic():
        user_lock(user)
        removed, _ = Authenticator.objects.filter(user_id=user.pk).delete()
        if not removed:
            return 0
        user_end_sessions(user=user)
        two_factor_record(
            user=user, change=Change.RESET_BY_OPS, actor=actor, now=now, reason=reason
        )
    return removed
