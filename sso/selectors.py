"""Reads for the SSO pages and endpoints."""

from accounts.models import Organisation
from sso.models import SsoAttempt, SsoDomain

ATTEMPTS_SHOWN = 20


def attempts_recent(organisation: Organisation):
    return SsoAttempt.objects.filter(organisation=organisation).select_related("user")[
        :ATTEMPTS_SHOWN
    ]


def domains_of(organisation: Organisation) -> list[SsoDomain]:
    return list(SsoDomain.objects.filter(organisation=organisation))


def domain_of(organisation: Organisation, public_id) -> SsoDomain | None:
    return SsoDomain.objects.filter(organisation=organisation, public_id=public_id).first()


def organisation_active(slug: str) -> Organisation | None:
    """The active organisation at `slug`, with its plan (SSO availability reads it)."""
    return (
        Organisation.objects.select_related("subscription__plan")
        .filter(slug=slug, status=Organisation.Status.ACTIVE)
        .first()
    )


def organisation_for_email(email: str) -> Organisation | None:
    """The organisation that claimed the email's domain, if any."""
    domain = email.rpartition("@")[2].strip().lower()
    claim = (
        SsoDomain.objects.select_related("organisation")
        .filter(domain=domain, organisation__status=Organisation.Status.ACTIVE)
        .first()
    )
    return claim.organisation if claim else None
