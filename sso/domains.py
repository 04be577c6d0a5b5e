"""The email domains an organisation routes to its IdP ("Sign in with SSO" picks the
organisation by the email's domain). A domain belongs to one organisation at most."""

import re
from datetime import datetime

from django.db import IntegrityError, transaction

from accounts.audit import Actor, audit_record
from accounts.models import Organisation
from accounts.services import organisation_lock
from core.errors import ServiceError
from sso.configuration import require_available
from sso.models import SsoDomain

MAX_DOMAINS = 20
# Free-mail providers: an organisation that claimed one could have its IdP assert anyone's
# address there.
PUBLIC_EMAIL_DOMAINS = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "yahoo.com",
        "icloud.com",
        "me.com",
        "aol.com",
        "proton.me",
        "protonmail.com",
        "gmx.com",
        "gmx.de",
        "web.de",
        "mail.com",
        "yandex.com",
        "zoho.com",
    }
)
DOMAIN_RE = re.compile(r"^(?=.{4,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def email_domain(email: str) -> str:
    return email.rpartition("@")[2]


def domain_normalise(domain: str) -> str:
    domain = domain.strip().lower().rstrip(".")
    if domain.startswith("@"):
        domain = domain[1:]
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ServiceError(f"{domain} is not a domain name.", field="domain") from None
    if not DOMAIN_RE.match(domain):
        raise ServiceError(
            "Enter a domain like example.com (without @ or https://).", field="domain"
        )
    return domain


def domain_add(
    *, organisation: Organisation, actor: Actor, domain: str, now: datetime
) -> SsoDomain:
    require_available(organisation)
    domain = domain_normalise(domain)
    if domain in PUBLIC_EMAIL_DOMAINS:
        raise ServiceError(
            f"{domain} is a public email provider; only your organisation's own domains can "
            "be routed to your IdP.",
            field="domain",
        )
    with transaction.atomic():
        organisation_lock(organisation)
        if SsoDomain.objects.filter(organisation=organisation).count() >= MAX_DOMAINS:
            raise ServiceError(f"At most {MAX_DOMAINS} domains per organisation.", field="domain")
        claimed = SsoDomain.objects.filter(domain=domain).first()
        if claimed is not None:
            if claimed.organisation_id == organisation.pk:
                raise ServiceError(f"{domain} is already in your list.", field="domain")
            raise ServiceError(
                f"{domain} is already used for SSO by another organisation. Contact support "
                "if it is yours.",
                field="domain",
            )
        try:
            with transaction.atomic():
                claim = SsoDomain.objects.create(
                    organisation=organisation, domain=domain, created_at=now, created_by=actor.user
                )
        except IntegrityError:  # claimed by another organisation a moment ago
            raise ServiceError(
                f"{domain} is already used for SSO by another organisation.", field="domain"
            ) from None
        audit_record(
            organisation=organisation,
            actor=actor,
            action="sso.domain_added",
            target=claim,
            target_label=domain,
            now=now,
        )
    return claim


def domain_remove(*, claim: SsoDomain, actor: Actor, now: datetime) -> None:
    with transaction.atomic():
        organisation_lock(claim.organisation)
        deleted, _ = SsoDomain.objects.filter(pk=claim.pk).delete()
        if deleted:
            audit_record(
                organisation=claim.organisation,
                actor=actor,
                action="sso.domain_removed",
                target_label=claim.domain,
                now=now,
            )
