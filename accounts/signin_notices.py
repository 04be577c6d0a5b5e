"""Sign-in notices: an email when a user signs in from a browser not seen before for them
(docs/architecture.md#decision-session-records-and-sign-in-notices).

A browser is recognised by a long-lived signed cookie holding a random id. The database keeps
only a hash of that id per user (KnownBrowser), so the cookie carries no user data and nothing
about the device is fingerprinted.
"""

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.db import transaction
from django.dispatch import receiver
from django.utils import timezone

from accounts.emails import email_send
from accounts.models import KnownBrowser, User
from accounts.services import user_lock
from accounts.user_agents import describe_user_agent
from core.http import client_ip
from core.links import absolute_url

BROWSER_COOKIE = "portal_browser"
BROWSER_COOKIE_SALT = "accounts.signin_notices.browser"
BROWSER_COOKIE_AGE = timedelta(days=2 * 365)
# A browser unseen this long is forgotten (the cookie has expired by then anyway).
KNOWN_BROWSER_KEEP = timedelta(days=2 * 365)
# Where the sign-in receiver leaves the browser id for SessionRecordMiddleware to set.
REQUEST_ATTRIBUTE = "portal_browser_id"


def browser_id_from_request(request) -> str | None:
    """The browser id of a valid cookie; None when there is none or it is forged or garbled."""
    value = request.get_signed_cookie(
        BROWSER_COOKIE,
        default=None,
        salt=BROWSER_COOKIE_SALT,
        max_age=int(BROWSER_COOKIE_AGE.total_seconds()),
    )
    if not value or len(value) > 64:
        return None
    return value


def set_browser_cookie(response, browser_id: str) -> None:
    response.set_signed_cookie(
        BROWSER_COOKIE,
        browser_id,
        salt=BROWSER_COOKIE_SALT,
        max_age=int(BROWSER_COOKIE_AGE.total_seconds()),
        httponly=True,
        secure=not settings.DEBUG,
        samesite="Lax",
    )


def _browser_hash(browser_id: str) -> str:
    return hashlib.sha256(browser_id.encode()).hexdigest()


def signin_record(
    *,
    user: User,
    browser_id: str,
    user_agent: str,
    ip_address: str | None,
    now: datetime,
) -> bool:
    """Remember the browser the user signed in from; email them when it is new to them.
    Returns whether a notice was queued.

    The first browser of an account sends nothing: a brand-new account (or an account from
    before notices existed) has no browser to compare with, and a notice on every first
    sign-in would teach people to ignore them.
    """
    browser_hash = _browser_hash(browser_id)
    with transaction.atomic():
        # One sign-in of a user at a time decides whether a browser is new.
        user_lock(user)
        updated = KnownBrowser.objects.filter(user=user, browser_hash=browser_hash).update(
            last_seen_at=now
        )
        if updated:
            return False
        has_others = KnownBrowser.objects.filter(user=user).exists()
        KnownBrowser.objects.create(
            user=user, browser_hash=browser_hash, first_seen_at=now, last_seen_at=now
        )
        if not has_others:
            return False
        email_send(
            template="new_signin",
            to=user.email,
            context={
                "user": user,
                "signed_in_at": now.astimezone(UTC),
                "device": describe_user_agent(user_agent),
                "ip_address": ip_address or "unknown",
                "security_url": absolute_url("accounts:security"),
            },
        )
    return True


def known_browsers_purge(*, now: datetime) -> int:
    """Forget browsers unseen for KNOWN_BROWSER_KEEP (a scheduled job; idempotent)."""
    deleted, _ = KnownBrowser.objects.filter(last_seen_at__lt=now - KNOWN_BROWSER_KEEP).delete()
    return deleted


@receiver(user_logged_in, dispatch_uid="accounts.signin_notices.on_signin")
def on_signin(sender, request, user, **kwargs):
    """Every sign-in (password, two-factor, SSO) ends in django.contrib.auth.login, which sends
    user_logged_in: the one place that sees them all."""
    if request is None:
        return
    browser_id = browser_id_from_request(request) or secrets.token_urlsafe(24)
    signin_record(
        user=user,
        browser_id=browser_id,
        user_agent=request.META.get("HTTP_USER_AGENT", ""),
        ip_address=client_ip(request),
        now=timezone.now(),
    )
    # Renewed on every sign-in, so a browser in use stays known.
    setattr(request, REQUEST_ATTRIBUTE, browser_id)
