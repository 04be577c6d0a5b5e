"""Keeps the session records up to date
(docs/architecture.md#decision-session-records-and-sign-in-notices)."""

from datetime import timedelta

from django.contrib.auth import SESSION_KEY
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone

from accounts.session_store import SessionStore
from accounts.signin_notices import REQUEST_ATTRIBUTE, set_browser_cookie
from accounts.user_sessions import LAST_USE_PRECISION
from core.http import client_ip


class SessionRecordMiddleware:
    """Notes a signed-in session's last use, browser and address on sign-in and then at most
    every LAST_USE_PRECISION: the note rides on the session save Django's SessionMiddleware
    makes at the end of the request, so a page view in between writes and reads nothing more.
    Also sets the browser cookie of sign-in notices after a sign-in (accounts.signin_notices).
    Sits after AuthenticationMiddleware, so it runs before the session is saved."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        self.note_use(request)
        browser_id = getattr(request, REQUEST_ATTRIBUTE, None)
        if browser_id is not None:
            set_browser_cookie(response, browser_id)
        return response

    def note_use(self, request) -> None:
        session = getattr(request, "session", None)
        # Only a signed-in session this request loaded or created: never a query of its own.
        if not isinstance(session, SessionStore) or not hasattr(session, "_session_cache"):
            return
        if session.get(SESSION_KEY) is None:
            return
        now = timezone.now()
        record = session.record
        if (
            record is None
            or record.session_key != session.session_key
            or record.last_seen_at is None
            # A last use in the future (a clock set back) is rewritten too.
            or not timedelta(0) <= now - record.last_seen_at < LAST_USE_PRECISION
        ):
            session.note_use(
                now=now,
                user_agent=request.META.get("HTTP_USER_AGENT", ""),
                ip_address=client_ip(request),
            )


# allauth.mfa's own management pages and where ours are: allauth.urls brings them along, and
# its flows still lead to some (after a security key is added, to its recovery codes page).
# One set of pages, with our rules (one authenticator app per user, a code to remove it, the
# codes downloadable once), so allauth's send the person to ours.
ALLAUTH_MANAGEMENT_PAGES = {
    "mfa_index": "accounts:security",
    "mfa_activate_totp": "accounts:security_totp_activate",
    "mfa_deactivate_totp": "accounts:security_totp_deactivate",
    "mfa_view_recovery_codes": "accounts:security_recovery_codes",
    "mfa_download_recovery_codes": "accounts:security_recovery_codes",
    "mfa_generate_recovery_codes": "accounts:security",
}


class AllauthManagementPagesMiddleware:
    """Sends allauth.mfa's management pages to the Security page's own (query string kept, so a
    `next` survives); a POST there changes nothing."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        match = request.resolver_match
        ours = ALLAUTH_MANAGEMENT_PAGES.get(match.url_name) if not match.namespace else None
        if ours is None:
            return None
        query = request.META.get("QUERY_STRING", "")
        return redirect(f"{reverse(ours)}?{query}" if query else reverse(ours))
