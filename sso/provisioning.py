"""Who may sign in through an organisation's IdP, and the account a sign-in creates.

Who may sign in (`user_for`):
- an active member of the organisation, whatever their email domain;
- someone with a pending invitation to the organisation (the IdP proves the address as the
  emailed link would): the invitation is accepted;
- a person from one of the organisation's email domains without any account, when the Admin
  turned on "Create users on first sign-in" (off by default, `provisioning_set`), with the
  role chosen there.
Anyone else is refused, in particular an existing account that is not a member (an IdP cannot
take over an account its organisation does not own) and any email outside the organisation's
domains that is not one of its users.

A session started through organisation A's IdP opens only A (see accounts.tenancy).
"""

from datetime import datetime

from allauth.account.models import EmailAddress
from django.db import transaction

from accounts.audit import Actor, audit_record
from accounts.models import Membership, Organisation, User
from accounts.services import invitation_accept_by_email, organisation_lock
from core.errors import ServiceError
from sso.configuration import (
    configuration_audit,
    configuration_facts,
    configuration_locked,
    require_available,
)
from sso.domains import email_domain
from sso.models import SsoConfiguration, SsoDomain
from sso.saml import Assertion

# Never Admin: an IdP should not be able to mint administrators.
PROVISION_ROLES = (Membership.Role.MEMBER, Membership.Role.BILLING)


def provisioning_set(
    *, organisation: Organisation, actor: Actor, enabled: bool, role: str, now: datetime
) -> SsoConfiguration:
    require_available(organisation)
    if role not in PROVISION_ROLES:
        raise ServiceError("New users can be Members or Billing contacts.", field="provision_role")
    with transaction.atomic():
        config = configuration_locked(organisation)
        before = configuration_facts(config)
        config.provision_users = enabled
        config.provision_role = role
        config.updated_at = now
        config.save(update_fields=["provision_users", "provision_role", "updated_at"])
        configuration_audit(
            config, actor=actor, action="sso.provisioning_changed", before=before, now=now
        )
    return config


def user_for(
    config: SsoConfiguration, assertion: Assertion, *, now: datetime
) -> tuple[User | None, str]:
    """Who `assertion` signs in as, or (None, why not). New users are unsaved User objects."""
    organisation = config.organisation
    email = assertion.email
    in_domains = SsoDomain.objects.filter(
        organisation=organisation, domain=email_domain(email)
    ).exists()
    user = User.objects.filter(email__iexact=email).first()
    membership = (
        Membership.objects.filter(organisation=organisation, user=user).first() if user else None
    )
    if membership is not None:
        if membership.status != Membership.Status.ACTIVE or not user.is_active:
            return None, f"{email} is deactivated in {organisation.name}."
        role = membership.get_role_display()
        return user, f"Recognised as {email} ({role}) of {organisation.name}."
    if not in_domains:
        return None, (
            f"{email} is outside {organisation.name}'s SSO domains and is not one of its users."
        )
    invited = organisation.invitations.filter(
        email__iexact=email, status="pending", expires_at__gt=now
    ).exists()
    if user is not None:
        if invited:
            return user, f"{email} accepts the pending invitation."
        return None, (
            f"An account for {email} exists but is not a user of {organisation.name}. An Admin "
            "can invite it."
        )
    if invited:
        return User(email=email), f"A new account for {email} accepts the pending invitation."
    if config.provision_users:
        role = Membership.Role(config.provision_role).label
        return User(email=email), f"A new account for {email} is created ({role})."
    return None, (
        f"{email} is not a user of {organisation.name}. Ask an Admin to invite you (or to turn "
        "on creating users on first sign-in)."
    )


def user_provision(
    config: SsoConfiguration,
    assertion: Assertion,
    user: User,
    *,
    ip_address: str | None,
    now: datetime,
) -> tuple[User, Membership]:
    """Create the account and membership a sign-in needs (see `user_for`)."""
    organisation = config.organisation
    if user.pk is None:
        user = User.objects.create_user(
            email=assertion.email,
            password=None,
            full_name=assertion.full_name[:150],
            date_joined=now,
        )
        EmailAddress.objects.create(user=user, email=user.email, primary=True, verified=True)
    membership = Membership.objects.filter(organisation=organisation, user=user).first()
    if membership is None:
        membership = invitation_accept_by_email(
            organisation=organisation, user=user, ip_address=ip_address, now=now
        )
    if membership is None:
        organisation_lock(organisation)
        membership = Membership.objects.create(
            organisation=organisation, user=user, role=config.provision_role, created_at=now
        )
        audit_record(
            organisation=organisation,
            actor=Actor(user=user, ip_address=ip_address),
            action="member.added",
            target=membership,
            target_label=user.email,
            changes={
                "role": {"old": None, "new": membership.role},
                "via": {"old": None, "new": "SSO"},
            },
            now=now,
        )
    return user, membership
