"""Ending sessions from Security
(docs/architecture.md#decision-session-records-and-sign-in-notices)."""

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.models import UserSession
from accounts.user_agents import describe_user_agent
from accounts.user_sessions import (
    user_session_end,
    user_session_for_user,
    user_sessions_end_others,
)
from core.errors import ServiceError


@require_POST
@login_required
def session_end(request, session_id: uuid.UUID):
    try:
        session = user_session_for_user(user=request.user, public_id=session_id, now=timezone.now())
    except UserSession.DoesNotExist:
        # Someone else's session, an ended one or none: all look the same.
        raise Http404("No such session.") from None
    try:
        user_session_end(
            user=request.user, session=session, current_session_key=request.session.session_key
        )
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request, f"Signed out the session on {describe_user_agent(session.user_agent)}."
        )
    return redirect("accounts:security")


@require_POST
@login_required
def sessions_end_others(request):
    ended = user_sessions_end_others(
        user=request.user, current_session_key=request.session.session_key, now=timezone.now()
    )
    if ended:
        messages.success(
            request,
            f"Signed out {ended} other session{'s' if ended != 1 else ''}. "
            "This browser stays signed in.",
        )
    else:
        messages.info(request, "You have no other sessions to sign out.")
    return redirect("accounts:security")
