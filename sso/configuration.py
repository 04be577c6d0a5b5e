"""The organisation's SSO configuration: whether its plan allows SSO, and saving its IdP.

Every change to the settings is audited with what differs (`configuration_audit`). The domains
routed to the IdP are `sso.domains`, enforcement `sso.enforcement`, the new-user setting
`sso.provisioning`, and keeping the IdP's certificates current `sso.certificates`.
"""

from datetime import datetime
from enum import StrEnum

from django.db import transaction

from accounts.audit import Actor, audit_record, changes_between
from accounts.models import Organisation
from accounts.services import organisation_lock
from core.errors import ServiceError
from sso.metadata import metadata_fetch, metadata_parse
from sso.models import SsoConfiguration


class ConfigurationCode(StrEnum):
    """`ServiceError.code` of the refusals raised here."""

    NOT_AVAILABLE = "not_available"


def sso_available(organisation: Organisation) -> bool:
    """SSO is an Enterprise feature: the subscription's plan must include it."""
    subscription = getattr(organisation, "subscription", None)
    return bool(
        subscription is not None
        and subscription.plan.allows_sso
        and subscription.status != subscription.Status.ENDED
    )


def require_available(organisation: Organisation) -> None:
    if not sso_available(organisation):
        raise ServiceError(
            "Single sign-on is part of the Enterprise plan. Upgrade to configure it.",
            code=ConfigurationCode.NOT_AVAILABLE,
        )


def configuration_for(organisation: Organisation) -> SsoConfiguration:
    """The organisation's configuration row, made on first use so the SP details exist."""
    config, _ = SsoConfiguration.objects.select_related(
        "organisation", "backup_admin"
    ).get_or_create(organisation=organisation)
    return config


def configuration_locked(organisation: Organisation) -> SsoConfiguration:
    """The configuration row under a lock, taken after the organisation's lock."""
    organisation_lock(organisation)
    configuration_for(organisation)
    return SsoConfiguration.objects.select_for_update().get(organisation=organisation)


def configuration_facts(config: SsoConfiguration) -> dict:
    return {
        "idp_type": config.idp_type,
        "metadata_url": config.metadata_url,
        "idp_entity_id": config.idp_entity_id,
        "idp_sso_url": config.idp_sso_url,
        "certificates": sorted(c["fingerprint"][:16] for c in config.idp_certificates),
        "enforced": config.enforced,
        "backup_admin": config.backup_admin.email if config.backup_admin_id else None,
        "provision_users": config.provision_users,
        "provision_role": config.provision_role,
    }


def configuration_audit(
    config: SsoConfiguration, *, actor: Actor, action: str, before: dict, now: datetime
) -> None:
    """The audit row of a change to the SSO settings: what differs from `before`."""
    audit_record(
        organisation=config.organisation,
        actor=actor,
        action=action,
        target=config,
        target_label="SSO",
        changes=changes_between(before, configuration_facts(config)),
        now=now,
    )


def _metadata_read(*, metadata_url: str, metadata_xml: str, now: datetime):
    """The IdP metadata fetched from `metadata_url`, or else the pasted XML, parsed."""
    if not metadata_url:
        return metadata_parse(metadata_xml, now=now)
    xml = metadata_fetch(metadata_url)
    try:
        return metadata_parse(xml, now=now)
    except ServiceError as error:
        raise ServiceError(
            f"The metadata URL answered, but: {error.message}", field="metadata_url"
        ) from None


def idp_configure(
    *,
    organisation: Organisation,
    actor: Actor,
    idp_type: str,
    metadata_url: str,
    metadata_xml: str,
    now: datetime,
) -> tuple[SsoConfiguration, list[str]]:
    """Read the IdP metadata (fetched from `metadata_url`, or pasted) and save what it says.

    Returns the configuration and warnings to show. A new IdP (entity id or SSO URL) must be
    tested again, so it clears the test and switches enforcement off; new certificates alone
    (a rollover) keep both.
    """
    require_available(organisation)
    if idp_type not in SsoConfiguration.IdpType.values:
        raise ServiceError("Choose your Identity Provider.", field="idp_type")
    metadata_url = metadata_url.strip()
    if metadata_url and metadata_xml.strip():
        raise ServiceError(
            "Enter the metadata URL or paste the XML, not both.", field="metadata_url"
        )
    found = _metadata_read(metadata_url=metadata_url, metadata_xml=metadata_xml, now=now)
    warnings = list(found.warnings)
    with transaction.atomic():
        config = configuration_locked(organisation)
        before = configuration_facts(config)
        new_idp = (config.idp_entity_id, config.idp_sso_url) != (found.entity_id, found.sso_url)
        config.idp_type = idp_type
        config.metadata_url = metadata_url
        config.metadata_xml = "" if metadata_url else metadata_xml.strip()
        config.idp_entity_id = found.entity_id
        config.idp_sso_url = found.sso_url
        config.idp_certificates = found.certificates
        config.configured_at = now
        config.metadata_refreshed_at = now if metadata_url else None
        config.metadata_refresh_error = ""
        config.updated_at = now
        if new_idp:
            config.tested_at = None
            if config.enforced:
                warnings.append(
                    "SSO enforcement was switched off because the Identity Provider changed. "
                    "Test the new settings, then enforce again."
                )
            config.enforced = False
            config.enforced_at = None
        config.save()
        configuration_audit(
            config, actor=actor, action="sso.idp_configured", before=before, now=now
        )
    return config, warnings
