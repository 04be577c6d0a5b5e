"""SSO rules: configuring the IdP, domains, enforcement, and consuming SAML responses.

Who may sign in through an organisation's IdP (`_user_for`):
- an active member of the organisation, whatever their email domain;
- someone with a pending invitation to the organisation (the IdP proves the address as the
  emailed link would): the invitation is accepted;
- a person from one of the organisation's email domains without any account, when the Admin
  turned on "Create users on first sign-in" (off by default), with the role chosen there.
Anyone else is refused, in particular an existing account that is not a member (an IdP cannot
take over an account its organisation does not own) and any email outside the organisation's
domains that is not one of its users.

A session started through organisation A's IdP opens only A (see accounts.tenancy).
"""

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from allauth.account.models import EmailAddress
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils.http import url_has_allowed_host_and_scheme

from accounts.audit import SYSTEM, Actor, audit_record, changes_between, reason_change
from accounts.emails import email_send
from accounts.models import Membership, Organisation, User
from accounts.services import invitation_accept_by_email, organisation_lock
from core.errors import ServiceError
from core.links import absolute_url
from sso import saml
from sso.metadata import certificate_expires, metadata_fetch, metadata_parse
from sso.models import SsoAttempt, SsoConfiguration, SsoDomain, SsoRequest

logger = logging.getLogger(__name__)

CERTIFICATE_WARNING_DAYS = 30
ATTEMPTS_SHOWN = 20
ATTEMPTS_KEPT_DAYS = 90
MAX_DOMAINS = 20
PROVISION_ROLES = (Membership.Role.MEMBER, Membership.Role.BILLING)
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


# Reads ------------------------------------------------------------------------------------


def sso_available(organisation: Organisation) -> bool:
    """SSO is an Enterprise feature: the subscription's plan must include it."""
    subscription = getattr(organisation, "subscription", None)
    return bool(
        subscription is not None
        and subscription.plan.allows_sso
        and subscription.status != subscription.Status.ENDED
    )


def configuration_for(organisation: Organisation) -> SsoConfiguration:
    """The organisation's configuration row, made on first use so the SP details exist."""
    config, _ = SsoConfiguration.objects.select_related(
        "organisation", "backup_admin"
    ).get_or_create(organisation=organisation)
    return config


def attempts_recent(organisation: Organisation):
    return SsoAttempt.objects.filter(organisation=organisation).select_related("user")[
        :ATTEMPTS_SHOWN
    ]


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


def backup_admin_is_valid(config: SsoConfiguration) -> bool:
    return bool(
        config.backup_admin_id
        and Membership.objects.filter(
            organisation_id=config.organisation_id,
            user_id=config.backup_admin_id,
            role=Membership.Role.ADMIN,
            status=Membership.Status.ACTIVE,
        ).exists()
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


# Configuring ------------------------------------------------------------------------------


def _locked_config(organisation: Organisation) -> SsoConfiguration:
    organisation_lock(organisation)
    configuration_for(organisation)
    return SsoConfiguration.objects.select_for_update().get(organisation=organisation)


def _require_available(organisation: Organisation) -> None:
    if not sso_available(organisation):
        raise ServiceError(
            "Single sign-on is part of the Enterprise plan. Upgrade to configure it.",
            code="not_available",
        )


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
    _require_available(organisation)
    if idp_type not in SsoConfiguration.IdpType.values:
        raise ServiceError("Choose your Identity Provider.", field="idp_type")
    metadata_url = metadata_url.strip()
    if metadata_url and metadata_xml.strip():
        raise ServiceError(
            "Enter the metadata URL or paste the XML, not both.", field="metadata_url"
        )
    if metadata_url:
        xml = metadata_fetch(metadata_url)
        try:
            found = metadata_parse(xml, now=now)
        except ServiceError as error:
            raise ServiceError(
                f"The metadata URL answered, but: {error.message}", field="metadata_url"
            ) from None
    else:
        found = metadata_parse(metadata_xml, now=now)
    warnings = list(found.warnings)
    with transaction.atomic():
        config = _locked_config(organisation)
        before = _config_facts(config)
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
        _config_audit(config, actor=actor, action="sso.idp_configured", before=before, now=now)
    return config, warnings


def _config_audit(config: SsoConfiguration, *, actor: Actor, action: str, before: dict, now):
    """The audit row of a change to the SSO settings: what differs from `before`."""
    audit_record(
        organisation=config.organisation,
        actor=actor,
        action=action,
        target=config,
        target_label="SSO",
        changes=changes_between(before, _config_facts(config)),
        now=now,
    )


def _config_facts(config: SsoConfiguration) -> dict:
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
    _require_available(organisation)
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


def provisioning_set(
    *, organisation: Organisation, actor: Actor, enabled: bool, role: str, now: datetime
) -> SsoConfiguration:
    _require_available(organisation)
    # Never Admin: an IdP should not be able to mint administrators.
    if role not in PROVISION_ROLES:
        raise ServiceError("New users can be Members or Billing contacts.", field="provision_role")
    with transaction.atomic():
        config = _locked_config(organisation)
        before = _config_facts(config)
        config.provision_users = enabled
        config.provision_role = role
        config.updated_at = now
        config.save(update_fields=["provision_users", "provision_role", "updated_at"])
        _config_audit(
            config, actor=actor, action="sso.provisioning_changed", before=before, now=now
        )
    return config


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
    _require_available(organisation)
    with transaction.atomic():
        config = _locked_config(organisation)
        if (
            backup_admin is not None
            and not Membership.objects.filter(
                organisation=organisation,
                user=backup_admin,
                role=Membership.Role.ADMIN,
                status=Membership.Status.ACTIVE,
            ).exists()
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
        before = _config_facts(config)
        config.backup_admin = backup_admin
        if enforced != config.enforced:
            config.enforced_at = now if enforced else None
        config.enforced = enforced
        config.updated_at = now
        config.save(update_fields=["backup_admin", "enforced", "enforced_at", "updated_at"])
        _config_audit(config, actor=actor, action="sso.enforcement_changed", before=before, now=now)
    return config


def enforcement_switch_off_by_ops(
    *, organisation: Organisation, actor: Actor, reason: str, now: datetime
) -> bool:
    """Ops' last resort against a lockout. Returns whether anything changed."""
    reason = reason.strip()
    if not reason:
        raise ServiceError("Give the reason for switching enforcement off.", field="reason")
    with transaction.atomic():
        config = _locked_config(organisation)
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


# Signing in -------------------------------------------------------------------------------


def browser_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_browser_token() -> str:
    return secrets.token_urlsafe(32)


def sign_in_start(
    *,
    organisation: Organisation,
    mode: str,
    browser_token: str,
    next_url: str = "",
    now: datetime,
) -> str:
    """Record an AuthnRequest for this browser and return the IdP URL to send it to."""
    if not sso_available(organisation):
        raise ServiceError(f"{organisation.name} has no single sign-on.", code="not_available")
    config = configuration_for(organisation)
    if not config.is_configured:
        raise ServiceError(
            f"{organisation.name} has not finished setting up single sign-on.",
            code="not_configured",
        )
    if next_url and not url_has_allowed_host_and_scheme(next_url, allowed_hosts=None):
        next_url = ""
    url, request_id = saml.authn_request(config)
    SsoRequest.objects.create(
        request_id=request_id,
        organisation=organisation,
        mode=mode,
        browser_hash=browser_hash(browser_token),
        next_url=next_url[:500],
        configured_at=config.configured_at,
        created_at=now,
    )
    return url


@dataclass
class Outcome:
    """What happened to one SAML response. `user` is set when a sign-in should happen."""

    status: int
    attempt: SsoAttempt | None
    mode: str
    reason: str = ""
    user: User | None = None
    next_url: str = ""
    membership: Membership | None = None

    @property
    def succeeded(self) -> bool:
        return self.attempt is not None and self.attempt.outcome == SsoAttempt.Outcome.SUCCESS


def _attempt(organisation, *, mode, reason, ip_address, now, assertion=None) -> SsoAttempt:
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


def response_consume(
    *,
    organisation: Organisation,
    saml_response: str,
    browser_token: str | None,
    ip_address: str | None,
    now: datetime,
) -> Outcome:
    """Check a SAMLResponse posted to `organisation`'s ACS and decide what it allows.

    The response is bound to a request we sent by the InResponseTo of its assertion, the part
    the IdP signs; the Response element around it is not signed and names whatever request an
    attacker wants (docs/sso.md). The request must be pending, this
    organisation's, unused and started in this browser; the assertion's ID is used once.

    Every refusal is logged as an SsoAttempt with its reason. A test-mode success marks the
    configuration tested; a sign-in success returns the user to sign in.
    """
    config = configuration_for(organisation)
    mode = SsoAttempt.Mode.SIGN_IN

    def refuse(reason, status=403, assertion=None):
        attempt = _attempt(
            organisation,
            mode=mode,
            reason=reason,
            ip_address=ip_address,
            now=now,
            assertion=assertion,
        )
        logger.info("SSO refused for %s: %s", organisation.slug, reason)
        return Outcome(status=status, attempt=attempt, mode=mode, reason=reason)

    if not sso_available(organisation) or not config.is_configured:
        return refuse(f"{organisation.name} has no single sign-on set up.", status=404)
    try:
        response = saml.response_open(config, saml_response)
        bound = saml.binding(response)
    except saml.SamlMalformed as error:
        return refuse(f"Malformed SAMLResponse: {error}", status=400)
    except Exception as error:  # noqa: BLE001 - the library's surprises are malformed input
        return refuse(f"Malformed SAMLResponse: {str(error)[:200]}", status=400)
    request_id = bound.request_id
    if request_id is None:
        if bound.response is None and not any(bound.assertion):
            return refuse(
                "Unsolicited response: the IdP started this sign-in (IdP-initiated), which we "
                "do not accept. Start from Sign in with SSO instead."
            )
        return refuse(
            "Unsolicited response: the assertion does not answer a sign-in request started "
            "here (its SubjectConfirmationData names no single InResponseTo, and only the "
            "signed assertion counts). Start from Sign in with SSO; if this keeps happening, "
            "the IdP must send InResponseTo in the assertion."
        )
    if bound.response is not None and bound.response != request_id:
        return refuse(
            "The assertion does not answer this sign-in request: the Response element names "
            f"{bound.response}, the signed assertion {request_id}."
        )
    with transaction.atomic():
        pending = SsoRequest.objects.select_for_update().filter(request_id=request_id).first()
        if pending is None:
            return refuse(
                "The response answers a sign-in request we did not send (InResponseTo unknown)."
            )
        mode = pending.mode
        if pending.organisation_id != organisation.pk:
            return refuse(
                "The response answers a sign-in started for another organisation; it was "
                "posted to the wrong ACS URL."
            )
        if pending.used_at is not None:
            return refuse("The response was already used (replayed). Sign in again.")
        if not browser_token or browser_hash(browser_token) != pending.browser_hash:
            return refuse(
                "The response answers a sign-in started in another browser. Start the sign-in "
                "again from this browser."
            )
        pending.used_at = now
        pending.save(update_fields=["used_at"])
        if pending.created_at < now - timedelta(minutes=settings.SSO_REQUEST_VALID_MINUTES):
            return refuse("The sign-in took too long at the IdP. Start it again.")
    try:
        assertion = saml.response_validate(config, saml_response, request_id=request_id)
    except saml.SamlRefused as error:
        return refuse(error.reason)
    except Exception as error:  # noqa: BLE001 - the library's surprises are malformed input
        logger.warning("SSO response for %s broke the validator", organisation.slug, exc_info=True)
        return refuse(f"Malformed SAMLResponse: {str(error)[:200]}", status=400)
    replayed = (
        "The assertion was already used (replayed): each assertion signs in once. Sign in again."
    )
    if _assertion_used(organisation, assertion):
        return refuse(replayed, assertion=assertion)
    if not assertion.email:
        return refuse(
            "The IdP sent no email address (NameID or an email attribute).", assertion=assertion
        )
    user, reason = _user_for(config, assertion, now=now)
    if user is None:
        return refuse(reason, assertion=assertion)
    with transaction.atomic():
        try:
            # A savepoint: a concurrent post of the same assertion may win the unique
            # constraint, and the refusal below must still be written in this transaction.
            with transaction.atomic():
                attempt = SsoAttempt.objects.create(
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
            return refuse(replayed, assertion=assertion)
        membership = None
        if mode == SsoAttempt.Mode.TEST:
            # Counts only for the IdP settings the test was started with.
            SsoConfiguration.objects.filter(
                pk=config.pk, configured_at=pending.configured_at
            ).update(tested_at=now)
        else:
            user, membership = _user_provision(
                config, assertion, user, ip_address=ip_address, now=now
            )
            attempt.user = user
            attempt.save(update_fields=["user"])
    return Outcome(
        status=200,
        attempt=attempt,
        mode=mode,
        reason=reason,
        user=user,
        next_url=pending.next_url,
        membership=membership,
    )


def _assertion_used(organisation: Organisation, assertion) -> bool:
    return SsoAttempt.objects.filter(
        organisation=organisation, assertion_id=assertion.assertion_id[:256]
    ).exists()


def _email_domain(email: str) -> str:
    return email.rpartition("@")[2]


def _user_for(config, assertion, *, now) -> tuple[User | None, str]:
    """Who `assertion` signs in as, or (None, why not). New users are unsaved User objects."""
    organisation = config.organisation
    email = assertion.email
    in_domains = SsoDomain.objects.filter(
        organisation=organisation, domain=_email_domain(email)
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


def _user_provision(config, assertion, user: User, *, ip_address, now):
    """Create the account and membership a sign-in needs (see `_user_for`)."""
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


# Scheduled work ---------------------------------------------------------------------------


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
        refreshed += 1
    return {"refreshed": refreshed, "failed": failed}


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


def housekeeping(*, now: datetime) -> dict:
    """Forget answered or abandoned sign-in requests and attempts older than 90 days."""
    requests, _ = SsoRequest.objects.filter(created_at__lt=now - timedelta(days=1)).delete()
    attempts, _ = SsoAttempt.objects.filter(
        created_at__lt=now - timedelta(days=ATTEMPTS_KEPT_DAYS)
    ).delete()
    return {"requests": requests, "attempts": attempts}
