"""Billing Information: the organisation's billing details as invoices carry them.

Changed details apply to invoices issued from then on; an issued invoice keeps the snapshot
it was issued with.
"""

from datetime import datetime

from django.db import transaction

from accounts.audit import Actor, audit_record, changes_between
from accounts.models import Organisation
from accounts.services import organisation_lock
from billing.models import BillingProfile


def billing_details_snapshot(*, organisation: Organisation, profile: BillingProfile | None) -> dict:
    return (profile or BillingProfile(organisation=organisation)).snapshot()


def billing_profile_update(
    *, organisation: Organisation, actor: Actor, now: datetime, **fields
) -> BillingProfile:
    """Billing Information: applies to invoices issued from now on; past invoices never change."""
    with transaction.atomic():
        organisation_lock(organisation)
        profile, _ = BillingProfile.objects.get_or_create(organisation=organisation)
        old = {name: str(getattr(profile, name)) for name in fields}
        for name, value in fields.items():
            setattr(profile, name, value)
        changes = changes_between(old, {name: str(value) for name, value in fields.items()})
        if changes:
            profile.save()
            audit_record(
                organisation=organisation,
                actor=actor,
                action="billing.details_updated",
                target=profile,
                target_label="Billing Information",
                changes=changes,
                now=now,
            )
    return profile
