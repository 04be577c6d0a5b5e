"""Consuming the SAMLResponse the IdP posts to an organisation's ACS: binding it to a request
we sent, refusing replays, and deciding who it signs in (docs/sso.md)."""

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from accounts.models import Membership, Organisation, User
from sso import saml
from sso.attempts import assertion_used, attempt_refused, attempt_succeeded
from sso.authn_requests import pending_request_answer
from sso.configuration import configuration_for, sso_available
from sso.models import SsoAttempt, SsoConfiguration, SsoRequest
from sso.provisioning import user_for, user_provision

# The logger's name from before this code left sso/services.py: log searches keep matching.
logger = logging.getLogger("sso.services")

REPLAYED = "The assertion was already used (replayed): each assertion signs in once. Sign in again."


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


@dataclass(frozen=True)
class Refusal:
    """Why a step refused the response, with the HTTP status to answer."""

    reason: str
    status: int = 403
    assertion: saml.Assertion | None = None


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

    def refuse(refusal: Refusal) -> Outcome:
        return _refused(organisation, refusal, mode=mode, ip_address=ip_address, now=now)

    if not sso_available(organisation) or not config.is_configured:
        return refuse(Refusal(f"{organisation.name} has no single sign-on set up.", status=404))
    request_id = _request_id(config, saml_response)
    if isinstance(request_id, Refusal):
        return refuse(request_id)
    with transaction.atomic():
        pending = SsoRequest.objects.select_for_update().filter(request_id=request_id).first()
        if pending is not None:
            mode = pending.mode
        reason = pending_request_answer(
            pending, organisation=organisation, browser_token=browser_token, now=now
        )
        if reason:
            return refuse(Refusal(reason))
    assertion = _assertion(config, saml_response, request_id=request_id)
    if isinstance(assertion, Refusal):
        return refuse(assertion)
    user, reason = user_for(config, assertion, now=now)
    if user is None:
        return refuse(Refusal(reason, assertion=assertion))
    with transaction.atomic():
        outcome = _success(
            config, pending, assertion, user, reason=reason, ip_address=ip_address, now=now
        )
        if isinstance(outcome, Refusal):
            return refuse(outcome)
    return outcome


def _refused(
    organisation: Organisation,
    refusal: Refusal,
    *,
    mode: str,
    ip_address: str | None,
    now: datetime,
) -> Outcome:
    attempt = attempt_refused(
        organisation,
        mode=mode,
        reason=refusal.reason,
        ip_address=ip_address,
        now=now,
        assertion=refusal.assertion,
    )
    logger.info("SSO refused for %s: %s", organisation.slug, refusal.reason)
    return Outcome(status=refusal.status, attempt=attempt, mode=mode, reason=refusal.reason)


def _request_id(config: SsoConfiguration, saml_response: str) -> str | Refusal:
    """The request the signed assertion answers, or why the response names none of ours."""
    try:
        response = saml.response_open(config, saml_response)
        bound = saml.binding(response)
    except saml.SamlMalformed as error:
        return Refusal(f"Malformed SAMLResponse: {error}", status=400)
    except Exception as error:  # noqa: BLE001 - the library's surprises are malformed input
        return Refusal(f"Malformed SAMLResponse: {str(error)[:200]}", status=400)
    request_id = bound.request_id
    if request_id is None:
        if bound.response is None and not any(bound.assertion):
            return Refusal(
                "Unsolicited response: the IdP started this sign-in (IdP-initiated), which we "
                "do not accept. Start from Sign in with SSO instead."
            )
        return Refusal(
            "Unsolicited response: the assertion does not answer a sign-in request started "
            "here (its SubjectConfirmationData names no single InResponseTo, and only the "
            "signed assertion counts). Start from Sign in with SSO; if this keeps happening, "
            "the IdP must send InResponseTo in the assertion."
        )
    if bound.response is not None and bound.response != request_id:
        return Refusal(
            "The assertion does not answer this sign-in request: the Response element names "
            f"{bound.response}, the signed assertion {request_id}."
        )
    return request_id


def _assertion(
    config: SsoConfiguration, saml_response: str, *, request_id: str
) -> saml.Assertion | Refusal:
    """The validated assertion, unused and naming an email, or why not."""
    organisation = config.organisation
    try:
        assertion = saml.response_validate(config, saml_response, request_id=request_id)
    except saml.SamlRefused as error:
        return Refusal(error.reason)
    except Exception as error:  # noqa: BLE001 - the library's surprises are malformed input
        logger.warning("SSO response for %s broke the validator", organisation.slug, exc_info=True)
        return Refusal(f"Malformed SAMLResponse: {str(error)[:200]}", status=400)
    if assertion_used(organisation, assertion):
        return Refusal(REPLAYED, assertion=assertion)
    if not assertion.email:
        return Refusal(
            "The IdP sent no email address (NameID or an email attribute).", assertion=assertion
        )
    return assertion


def _success(
    config: SsoConfiguration,
    pending: SsoRequest,
    assertion: saml.Assertion,
    user: User,
    *,
    reason: str,
    ip_address: str | None,
    now: datetime,
) -> Outcome | Refusal:
    """Record the success; a test marks the configuration tested, a sign-in gets its account
    and membership. Refused when a concurrent post of the same assertion won."""
    attempt = attempt_succeeded(
        config.organisation,
        mode=pending.mode,
        reason=reason,
        assertion=assertion,
        user=user,
        ip_address=ip_address,
        now=now,
    )
    if attempt is None:
        return Refusal(REPLAYED, assertion=assertion)
    membership = None
    if pending.mode == SsoAttempt.Mode.TEST:
        # Counts only for the IdP settings the test was started with.
        SsoConfiguration.objects.filter(pk=config.pk, configured_at=pending.configured_at).update(
            tested_at=now
        )
    else:
        user, membership = user_provision(config, assertion, user, ip_address=ip_address, now=now)
        attempt.user = user
        attempt.save(update_fields=["user"])
    return Outcome(
        status=200,
        attempt=attempt,
        mode=pending.mode,
        reason=reason,
        user=user,
        next_url=pending.next_url,
        membership=membership,
    )
