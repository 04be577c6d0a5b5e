"""Enforce SSO for all users: the organisation opens only through its IdP, except for the
backup admin, who keeps password sign-in so a misconfigured IdP cannot lock everyone out.

The configuration is saved here; accounts.tenancy applies it when someone signs in with a
password or opens the organisation (docs/architecture.md#sso).
"""

from datetime import datetime

from django.db import transaction

from accounts.audit import Actor, audit_record, reason_change
from accounts.models import Membership, Organisation, User
from core.errors import ServiceError
from sso.configuration import (
    configuration_audit,
    configuration_facts,
    configuration_locked,
    require_available,
)
from sso.models import SsoConfiguration


def _is_active_admin(*, organisation_id: int, user_id: int) -> bool:
    return Membership.objects.filter(
        organisation_id=organisation_id,
        user_id=user_id,
        role=Membership.Role.ADMIN,
        status=Membership.Status.ACTIVE,
    ).exists()


def backup_admin_is_valid(config: SsoConfiguration) -> bool:
    return bool(
        config.backup_admin_id
        and _is_active_admin(organisation_id=config.organisation_id, user_id=config.backup_admin_id)
    )


def enforcement_set(
    *,
    organisation: Organisation,
    actor: Actor,
    enforced: bool,
    backup_admin: User | None,
    now: datetime,
) -> SsoConfiguration:
    """Switch "Enforce SSO for all users" on or off, with the backup admin who keeps password
    sign-in. On needs a successful test of the current IdP settings and a backup admin who is
    an active Admin of the organisation."""
    require_available(organisation)
    with transaction.atomic():
        config = configuration_locked(organisation)
        if backup_admin is not None and not _is_active_admin(
            organisation_id=organisation.pk, user_id=backup_admin.pk
        ):
            raise ServiceError(
                "The backup admin must be an active Admin of this organisation.",
                field="backup_admin",
            )
        if enforced:
            if not config.is_configured:
                raise ServiceError("Configure your Identity Provider first.", field="enforced")
            if config.tested_at is None:
                raise ServiceError(
                    "Run Test SSO successfully with the current settings before enforcing SSO.",
                    field="enforced",
                )
            if backup_admin is None:
                raise ServiceError(
                    "Choose a backup admin who keeps password sign-in before enforcing SSO, "
                    "so a misconfigured IdP cannot lock everyone out.",
                    field="backup_admin",
                )
        before = configuration_facts(config)
        config.backup_admin = backup_admin
        if enforced != config.enforced:
            config.enforced_at = now if enforced else None
        config.enforced = enforced
        config.updated_at = now
        config.save(update_fields=["backup_admin", "enforced", "enforced_at", "updated_at"])
        configuration_audit(
            config, actor=actor, action="sso.enforcement_changed", before=before, now=now
        )
    return config


def enforcement_switch_off_by_ops(
    *, organisation: Organisation, actor: Actor, reason: str, now: datetime
) -> bool:
    """Ops' last resort against a lockout. Returns whether anything changed."""
    reason = reason.strip()
    if not reason:
        raise ServiceError("Give the reason for switching enforcement off.", field="reason")
    with transaction.atomic():
        config = configuration_locked(organisation)
        if not config.enforced:
            return False
        config.enforced = False
        config.enforced_at = None
        config.updated_at = now
        config.save(update_fields=["enforced", "enforced_at", "updated_at"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="sso.enforcement_switched_off_by_support",
            target=config,
            target_label="SSO",
            changes={"enforced": {"old": True, "new": False}, **reason_change(reason)},
            now=now,
        )
    return True
