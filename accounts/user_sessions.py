"""The signed-in sessions a user sees on Security, and ending them
(docs/architecture.md#decision-session-records-and-sign-in-notices)."""

import enum
import uuid
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone
from django.utils.timesince import timesince

from accounts.models import User, UserSession
from accounts.user_agents import describe_user_agent
from core.errors import ServiceError

# The last use is approximate: a session records it at most this often, so a page view does
# not write a row.
LAST_USE_PRECISION = timedelta(minutes=5)


class SessionError(enum.StrEnum):
    CURRENT = "current_session"


def user_sessions_list(*, user: User, now: datetime) -> list[UserSession]:
    """The user's sessions that still sign them in: not expired, and carrying the user's
    current session hash (a password change or ended sessions leave dead rows behind until
    they are deleted). Most recently used first. One query."""
    return list(
        UserSession.objects.filter(
            user=user, expire_date__gt=now, auth_hash=user.get_session_auth_hash()
        )
        .defer("session_data")
        .order_by("-last_seen_at", "-created_at", "pk")
    )


def user_session_for_user(*, user: User, public_id: uuid.UUID, now: datetime) -> UserSession:
    """One of the user's live sessions; UserSession.DoesNotExist for anyone else's."""
    return UserSession.objects.defer("session_data").get(
        user=user,
        public_id=public_id,
        expire_date__gt=now,
        auth_hash=user.get_session_auth_hash(),
    )


def user_session_end(*, user: User, session: UserSession, current_session_key: str | None) -> None:
    """Sign one other session of the user out at once: its row goes, so its next request
    finds no session. The session in use is ended with Sign out, which also clears the
    browser's cookie and sends the person to the sign-in page."""
    if session.session_key == current_session_key:
        raise ServiceError(
            "This is the session you are using. To end it, use Sign out.",
            code=SessionError.CURRENT,
        )
    with transaction.atomic():
        UserSession.objects.filter(user=user, session_key=session.session_key).delete()


def user_sessions_end_others(*, user: User, current_session_key: str | None, now: datetime) -> int:
    """Sign out every session of the user but the one in use; returns how many live sessions
    were ended (dead rows of the user are deleted too)."""
    with transaction.atomic():
        others = UserSession.objects.filter(user=user).exclude(session_key=current_session_key)
        live = others.filter(expire_date__gt=now, auth_hash=user.get_session_auth_hash()).count()
        others.delete()
    return live


def last_use_label(moment: datetime, *, now: datetime) -> str:
    """ "In the last 5 minutes", else "3 hours ago": the last use is only that precise."""
    if now - moment < LAST_USE_PRECISION:
        return "In the last 5 minutes"
    return f"{timesince(moment, now, depth=1)} ago"


def security_sessions_context(request) -> dict:
    """The context of templates/accounts/security_sessions.html, merged into Security's."""
    current_key = request.session.session_key
    now = timezone.now()
    sessions = user_sessions_list(user=request.user, now=now)
    for session in sessions:
        session.device = describe_user_agent(session.user_agent)
        session.is_current = session.session_key == current_key
        session.last_use = session.last_seen_at or session.created_at
        session.last_use_label = last_use_label(session.last_use, now=now)
    # The session in use first, then the others by last use.
    sessions.sort(key=lambda session: not session.is_current)
    return {
        "user_sessions": sessions,
        "user_sessions_others": sum(not session.is_current for session in sessions),
    }
