"""Sessions made as signing in makes them, for tests of the sessions list."""

from datetime import datetime

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

from accounts.models import UserSession
from accounts.session_store import SessionStore

CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)


def signed_in_session(
    user,
    *,
    user_agent: str = CHROME_MAC,
    ip_address: str = "203.0.113.7",
    last_seen_at: datetime | None = None,
) -> UserSession:
    """A session of `user` in another browser, as signing in there makes it."""
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    session = UserSession.objects.get(session_key=store.session_key)
    session.user_agent = user_agent
    session.ip_address = ip_address
    session.last_seen_at = last_seen_at or session.created_at
    session.save(update_fields=["user_agent", "ip_address", "last_seen_at"])
    return session
