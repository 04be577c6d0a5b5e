"""The log of sign-in attempts (Settings > SSO, "Recent sign-in attempts"): every refusal with
its reason, every success with the assertion's ID, which a later response may not reuse. The
daily housekeeping forgets old attempts and sign-in requests."""

from datetime import datetime, timedelta

from django.db import IntegrityError, transaction

from accounts.models import Organisation, User
from sso.models import SsoAttempt, SsoRequest
from sso.saml import Assertion

ATTEMPTS_KEPT_DAYS = 90


def attempt_refused(
    organisation: Organisation,
    *,
    mode: str,
    reason: str,
    ip_address: str | None,
    now: datetime,
    assertion: Assertion | None = None,
) -> SsoAttempt:
    return SsoAttempt.objects.create(
        organisation=organisation,
        mode=mode,
        outcome=SsoAttempt.Outcome.FAILURE,
        reason=reason[:500],
        email=(assertion.email if assertion else "")[:254],
        name_id=(assertion.name_id if assertion else "")[:500],
        attributes=assertion.attributes if assertion else {},
        ip_address=ip_address,
        created_at=now,
    )


def attempt_succeeded(
    organisation: Organisation,
    *,
    mode: str,
    reason: str,
    assertion: Assertion,
    user: User,
    ip_address: str | None,
    now: datetime,
) -> SsoAttempt | None:
    """The success row, or None when the assertion's ID was used meanwhile (replayed)."""
    try:
        # A savepoint: a concurrent post of the same assertion may win the unique
        # constraint, and the caller's refusal must still be written in its transaction.
        with transaction.atomic():
            return SsoAttempt.objects.create(
                organisation=organisation,
                mode=mode,
                outcome=SsoAttempt.Outcome.SUCCESS,
                reason=reason[:500],
                email=assertion.email[:254],
                name_id=assertion.name_id[:500],
                attributes=assertion.attributes,
                assertion_id=assertion.assertion_id[:256],
                user=user if user.pk else None,
                ip_address=ip_address,
                created_at=now,
            )
    except IntegrityError:
        return None


def assertion_used(organisation: Organisation, assertion: Assertion) -> bool:
    return SsoAttempt.objects.filter(
        organisation=organisation, assertion_id=assertion.assertion_id[:256]
    ).exists()


def housekeeping(*, now: datetime) -> dict:
    """Forget answered or abandoned sign-in requests and attempts older than 90 days."""
    requests, _ = SsoRequest.objects.filter(created_at__lt=now - timedelta(days=1)).delete()
    attempts, _ = SsoAttempt.objects.filter(
        created_at__lt=now - timedelta(days=ATTEMPTS_KEPT_DAYS)
    ).delete()
    return {"requests": requests, "attempts": attempts}
