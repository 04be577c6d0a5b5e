"""Keeping the IdP's signing certificates current: warnings on the SSO page, the daily
metadata refresh that picks up a rollover, and the email to the Admins before one expires."""

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q

from accounts.audit import SYSTEM, audit_record
from accounts.emails import email_send
from accounts.models import Membership, Organisation
from core.errors import ServiceError
from core.links import absolute_url
from sso.metadata import IdpMetadata, certificate_expires, metadata_fetch, metadata_parse
from sso.models import SsoConfiguration

CERTIFICATE_WARNING_DAYS = 30


def certificate_warnings(config: SsoConfiguration, *, now: datetime) -> list[str]:
    warnings = []
    for cert in config.idp_certificates:
        expires = certificate_expires(cert)
        if expires <= now:
            warnings.append(f"The IdP signing certificate {cert['subject']} has expired.")
        elif expires <= now + timedelta(days=CERTIFICATE_WARNING_DAYS):
            days = (expires - now).days
            warnings.append(
                f"The IdP signing certificate {cert['subject']} expires on "
                f"{expires:%d %b %Y} (in {days} day{'s' if days != 1 else ''}). Add the new "
                "certificate in your IdP and save the metadata again."
            )
    return warnings


def metadata_refresh_due(*, now: datetime) -> dict:
    """Fetch again the metadata of every configuration that came from a URL (daily).

    New signing certificates replace the list: during a rollover the IdP publishes old and new
    together, and both are accepted. A failed fetch keeps the last good metadata and records
    the error shown on the SSO page.
    """
    refreshed = failed = 0
    configs = (
        SsoConfiguration.objects.exclude(metadata_url="")
        .filter(organisation__status=Organisation.Status.ACTIVE)
        .filter(
            # Twenty hours rather than twenty-four: the daily tick never skips a day on jitter.
            Q(metadata_refreshed_at__isnull=True)
            | Q(metadata_refreshed_at__lte=now - timedelta(hours=20))
        )
        .values_list("pk", flat=True)
    )
    for pk in configs:
        config = SsoConfiguration.objects.select_related("organisation").get(pk=pk)
        try:
            found = metadata_parse(metadata_fetch(config.metadata_url), now=now)
        except ServiceError as error:
            SsoConfiguration.objects.filter(pk=pk).update(
                metadata_refresh_error=error.message[:500], metadata_refreshed_at=now
            )
            failed += 1
            continue
        _metadata_refresh_save(pk, found, now=now)
        refreshed += 1
    return {"refreshed": refreshed, "failed": failed}


def _metadata_refresh_save(pk: int, found: IdpMetadata, *, now: datetime) -> None:
    """Save the certificates a refresh found, unless the URL now describes another IdP."""
    with transaction.atomic():
        config = SsoConfiguration.objects.select_for_update().get(pk=pk)
        if (config.idp_entity_id, config.idp_sso_url) != (found.entity_id, found.sso_url):
            # A different IdP behind the same URL is not a refresh: the Admin decides.
            config.metadata_refresh_error = (
                "The metadata URL now describes a different IdP "
                f"({found.entity_id}); save the metadata again to use it."
            )
        else:
            old = {c["fingerprint"] for c in config.idp_certificates}
            new = {c["fingerprint"] for c in found.certificates}
            if old != new:
                audit_record(
                    organisation=config.organisation,
                    actor=SYSTEM,
                    action="sso.certificates_refreshed",
                    target=config,
                    target_label="SSO",
                    changes={
                        "certificates": {
                            "old": sorted(f[:16] for f in old),
                            "new": sorted(f[:16] for f in new),
                        }
                    },
                    now=now,
                )
            config.idp_certificates = found.certificates
            config.metadata_refresh_error = ""
        config.metadata_refreshed_at = now
        config.save(
            update_fields=[
                "idp_certificates",
                "metadata_refresh_error",
                "metadata_refreshed_at",
            ]
        )


def certificate_expiry_notify(*, now: datetime) -> int:
    """Email the Admins once per certificate that expires within 30 days. Returns emails sent."""
    sent = 0
    soon = now + timedelta(days=CERTIFICATE_WARNING_DAYS)
    for config in (
        SsoConfiguration.objects.select_related("organisation")
        .filter(organisation__status=Organisation.Status.ACTIVE)
        .exclude(idp_certificates=[])
    ):
        due = [
            cert
            for cert in config.idp_certificates
            if certificate_expires(cert) <= soon
            and cert["fingerprint"] not in config.expiry_notified
        ]
        if not due:
            continue
        with transaction.atomic():
            locked = SsoConfiguration.objects.select_for_update().get(pk=config.pk)
            due = [c for c in due if c["fingerprint"] not in locked.expiry_notified]
            if not due:
                continue
            admins = list(
                Membership.objects.filter(
                    organisation=config.organisation,
                    role=Membership.Role.ADMIN,
                    status=Membership.Status.ACTIVE,
                ).values_list("user__email", flat=True)
            )
            for cert in due:
                email_send(
                    template="sso_certificate_expiring",
                    to=admins,
                    context={
                        "subject": cert["subject"],
                        "expires_at": certificate_expires(cert),
                        "sso_url": absolute_url("sso:settings", config.organisation.slug),
                    },
                    organisation=config.organisation,
                )
                sent += len(admins)
            locked.expiry_notified = [*locked.expiry_notified, *(c["fingerprint"] for c in due)]
            locked.save(update_fields=["expiry_notified"])
    return sent
