"""Starting a sign-in: the AuthnRequest we send to the IdP, and the pending request that the
IdP's answer must name.

A pending request (`SsoRequest`) belongs to one organisation and one browser (the hash of the
`sso_state` cookie's token) and is answered once, within `SSO_REQUEST_VALID_MINUTES`
(docs/sso.md).
"""

import secrets
from datetime import datetime, timedelta
from enum import StrEnum

from django.conf import settings
from django.utils.http import url_has_allowed_host_and_scheme

from accounts.models import Organisation
from accounts.tokens import token_digest
from core.errors import ServiceError
from sso import saml
from sso.configuration import configuration_for, sso_available
from sso.models import SsoRequest


class SignInStartCode(StrEnum):
    """`ServiceError.code` of the refusals of `sign_in_start`."""

    NOT_AVAILABLE = "not_available"
    NOT_CONFIGURED = "not_configured"


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
        raise ServiceError(
            f"{organisation.name} has no single sign-on.", code=SignInStartCode.NOT_AVAILABLE
        )
    config = configuration_for(organisation)
    if not config.is_configured:
        raise ServiceError(
            f"{organisation.name} has not finished setting up single sign-on.",
            code=SignInStartCode.NOT_CONFIGURED,
        )
    if next_url and not url_has_allowed_host_and_scheme(next_url, allowed_hosts=None):
        next_url = ""
    url, request_id = saml.authn_request(config)
    SsoRequest.objects.create(
        request_id=request_id,
        organisation=organisation,
        mode=mode,
        browser_hash=token_digest(browser_token),
        next_url=next_url[:500],
        configured_at=config.configured_at,
        created_at=now,
    )
    return url


def pending_request_answer(
    pending: SsoRequest | None,
    *,
    organisation: Organisation,
    browser_token: str | None,
    now: datetime,
) -> str:
    """Mark `pending` (locked by the caller) answered; return why it may not be, or "".

    The request must exist, be `organisation`'s, unanswered and started in this browser. A
    request answered too late is used up all the same, so it cannot be tried again.
    """
    if pending is None:
        return "The response answers a sign-in request we did not send (InResponseTo unknown)."
    if pending.organisation_id != organisation.pk:
        return (
            "The response answers a sign-in started for another organisation; it was "
            "posted to the wrong ACS URL."
        )
    if pending.used_at is not None:
        return "The response was already used (replayed). Sign in again."
    if not browser_token or token_digest(browser_token) != pending.browser_hash:
        return (
            "The response answers a sign-in started in another browser. Start the sign-in "
            "again from this browser."
        )
    pending.used_at = now
    pending.save(update_fields=["used_at"])
    if pending.created_at < now - timedelta(minutes=settings.SSO_REQUEST_VALID_MINUTES):
        return "The sign-in took too long at the IdP. Start it again."
    return ""
