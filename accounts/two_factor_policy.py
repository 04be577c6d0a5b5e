"""The organisation's two-factor policy: who must sign in with a second factor, and the gate.

An Admin chooses, in Settings > Organisation, whether two-factor sign-in is required of nobody
(the default), of Admins and Billing contacts, or of everyone. A person in scope without a
second factor can use the organisation's pages only to set one up: accounts.tenancy.tenant_view
sends every request for them (GET or POST) to the Security page, after the access gates of the
apps above (an SSO-enforced person goes to their IdP, never to our setup). A session that came
through this organisation's IdP is exempt: the IdP vouched for the sign-in. The SSO backup
admin signs in with a password, so is not.

The policy is a column of the organisation, read with the membership of every page, so an
organisation without a policy pays no query; only a person in scope costs one query, for their
authenticators. See docs/architecture.md#decision-two-factor-policy-gate.
"""

from datetime import datetime
from enum import StrEnum

from django.contrib import messages
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode

from accounts.audit import Actor, audit_record, changes_between
from accounts.emails import email_send
from accounts.models import Membership, Organisation, User
from accounts.selectors import second_factors
from accounts.services import organisation_lock
from accounts.two_factor import has_two_factor
from core.errors import ServiceError

Policy = Organisation.TwoFactorPolicy

# Who each policy applies to, written down in one place.
ROLES_IN_SCOPE = {
    Policy.OFF: frozenset(),
    Policy.ADMINS_AND_BILLING: frozenset({Membership.Role.ADMIN, Membership.Role.BILLING}),
    Policy.EVERYONE: frozenset(Membership.Role.values),
}
SCOPE_WORDS = {
    Policy.ADMINS_AND_BILLING: "Admins and Billing contacts",
    Policy.EVERYONE: "everyone",
}


class TwoFactorPolicyError(StrEnum):
    INVALID_CHOICE = "invalid_choice"
    OWN_SECOND_FACTOR_REQUIRED = "own_second_factor_required"


def policy_applies(organisation: Organisation, role: str) -> bool:
    return role in ROLES_IN_SCOPE[organisation.two_factor_policy]


def setup_required(membership: Membership, user: User, *, sso_organisation_id) -> bool:
    """Whether `user` must set up a second factor before using the organisation of
    `membership`. Free when the policy does not apply to their role; one query when it does."""
    organisation = membership.organisation
    if not policy_applies(organisation, membership.role):
        return False
    if sso_organisation_id == organisation.pk:  # the organisation's IdP vouched for it
        return False
    return not has_two_factor(user)


def requirement_message(organisation: Organisation) -> str:
    scope = SCOPE_WORDS[organisation.two_factor_policy]
    return f"{organisation.name} requires two-factor sign-in for {scope}. Set it up to continue."


def setup_redirect(request, organisation: Organisation, *, next_url: str):
    """Send the person to set up a second factor, then back to `next_url`."""
    messages.warning(request, requirement_message(organisation))
    security = reverse("accounts:security")
    return redirect(f"{security}?{urlencode({'next': next_url})}")


def lacking_counts(*, organisation: Organisation) -> dict[str, int]:
    """{policy: how many active members it applies to have no second factor}. One query."""
    lacking = ~Exists(second_factors(OuterRef("user")))
    in_scope = ROLES_IN_SCOPE[Policy.ADMINS_AND_BILLING]
    counts = Membership.objects.filter(
        organisation=organisation, status=Membership.Status.ACTIVE
    ).aggregate(
        admins_and_billing=Count("pk", filter=lacking & Q(role__in=in_scope)),
        everyone=Count("pk", filter=lacking),
    )
    return {Policy.OFF: 0, **counts}


def _active_admin_emails(organisation: Organisation) -> list[str]:
    return list(
        Membership.objects.filter(
            organisation=organisation,
            status=Membership.Status.ACTIVE,
            role=Membership.Role.ADMIN,
        )
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )


def organisation_two_factor_policy_set(
    *, organisation: Organisation, actor: Actor, policy: str, now: datetime
) -> Organisation:
    """Settings > Organisation: who must sign in with a second factor.

    Any change needs the acting Admin's own second factor: enabling it without one would lock
    them out at once, and a stolen password alone must not be able to weaken it either. The
    change is audited like the other fields of the organisation and emailed to its Admins.
    """
    if policy not in Policy.values:
        raise ServiceError(
            "Choose one of the two-factor options.",
            code=TwoFactorPolicyError.INVALID_CHOICE,
            field="policy",
        )
    if actor.user is None or not has_two_factor(actor.user):
        raise ServiceError(
            "Set up two-factor sign-in for your own account first (on the Security page): "
            "only an Admin who uses it can change this policy.",
            code=TwoFactorPolicyError.OWN_SECOND_FACTOR_REQUIRED,
            field="policy",
        )
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        changes = changes_between(
            {"two_factor_policy": organisation.two_factor_policy},
            {"two_factor_policy": policy},
        )
        if not changes:
            return organisation
        organisation.two_factor_policy = policy
        organisation.save(update_fields=["two_factor_policy"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="organisation.updated",
            target=organisation,
            changes=changes,
            now=now,
        )
        email_send(
            template="two_factor_policy_changed",
            to=_active_admin_emails(organisation),
            context={
                "policy_label": organisation.get_two_factor_policy_display(),
                "actor_email": actor.email,
            },
            organisation=organisation,
        )
    return organisation
