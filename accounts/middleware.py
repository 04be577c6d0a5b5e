"""Keeps the session records up to date
(docs/architecture.md#decision-session-records-and-sign-in-notices)."""

from datetime import timedelta

from django.contrib.auth import SESSION_KEY
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
