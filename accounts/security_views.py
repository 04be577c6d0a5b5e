"""Security: the user's two-factor sign-in and signed-in sessions (a user page, not an
organisation's). The secrets, codes and the sign-in stage are allauth.mfa's; these views are
the pages around them (docs/architecture.md#decision-two-factor-sign-in-builds-on-allauth-mfa).
"""

import base64
from urllib.parse import urlencode

from allauth.account.decorators import reauthentication_required
from allauth.mfa.adapter import get_adapter as get_mfa_adapter
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal import flows as recovery_flows
from allauth.mfa.totp.forms import ActivateTOTPForm
from allauth.mfa.totp.internal import flows as totp_flows
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from accounts.security_forms import DeactivateTOTPForm
from accounts.two_factor import totp_activate, two_factor_status
from accounts.user_sessions import security_sessions_context
from core.errors import ServiceError

MFA = "allauth.mfa"


def _next(request) -> str:
    """The safe local page to return to once setup is done (the organisation page a policy
    sent the user from), or ""."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return ""


def _with_next(url: str, next_url: str) -> str:
    return f"{url}?{urlencode({'next': next_url})}" if next_url else url


@login_required
@require_safe
@never_cache
def security(request):
    status = two_factor_status(user=request.user)
    context = {
        "status": status,
        "next_url": _next(request),
        "security_keys": Authenticator.objects.filter(
            user_id=request.user.pk, type=Authenticator.Type.WEBAUTHN
        ).order_by("created_at"),
    }
    context.update(security_sessions_context(request))
    return render(request, "accounts/security.html", context)


@login_required
@never_cache
@reauthentication_required(app=MFA)
def totp_activate_view(request):
    next_url = _next(request)
    if two_factor_status(user=request.user).has_app:
        messages.info(request, "An authenticator app is already set up for your account.")
        return redirect(_with_next(reverse("accounts:security"), next_url))
    form = ActivateTOTPForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            totp_activate(request, form)
        except ServiceError as error:
            messages.error(request, error.message)
            return redirect(_with_next(reverse("accounts:security"), next_url))
        return redirect(_with_next(reverse("accounts:security_recovery_codes"), next_url))
    adapter = get_mfa_adapter()
    totp_url = adapter.build_totp_url(request.user, form.secret)
    svg = adapter.build_totp_svg(totp_url)
    return render(
        request,
        "accounts/security_totp_activate.html",
        {
            "form": form,
            "next_url": next_url,
            "qr_data_uri": "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode(),
            # Groups of four, as authenticator apps show keys typed by hand.
            "secret_groups": [form.secret[i : i + 4] for i in range(0, len(form.secret), 4)],
        },
    )


@login_required
@never_cache
def totp_deactivate_view(request):
    authenticator = Authenticator.objects.filter(
        user_id=request.user.pk, type=Authenticator.Type.TOTP
    ).first()
    if authenticator is None:
        return redirect("accounts:security")
    return _totp_deactivate(request, authenticator)


@reauthentication_required(app=MFA)
def _totp_deactivate(request, authenticator):
    form = DeactivateTOTPForm(request.POST or None, authenticator=authenticator)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            totp_flows.deactivate_totp(request, authenticator)
        return redirect("accounts:security")
    return render(request, "accounts/security_totp_deactivate.html", {"form": form})


@login_required
@never_cache
def recovery_codes_view(request):
    """The recovery codes, shown once right after they are generated (with a download), then
    only how many are left."""
    next_url = _next(request)
    codes, can_view = recovery_flows.view_recovery_codes(request)
    if codes is None:
        return redirect("accounts:security")
    unused = codes.get_unused_codes() if can_view else []
    return render(
        request,
        "accounts/security_recovery_codes.html",
        {
            "codes": unused,
            "left": len(codes.get_unused_codes()),
            "next_url": next_url,
            "download_uri": "data:text/plain;charset=utf-8;base64,"
            + base64.b64encode(("\r\n".join(unused) + "\r\n").encode()).decode(),
        },
    )


@login_required
@require_POST
@reauthentication_required(app=MFA)
def recovery_codes_regenerate(request):
    if not recovery_flows.can_generate_recovery_codes(request.user):
        messages.error(request, "Set up an authenticator app or a security key first.")
        return redirect("accounts:security")
    recovery_flows.generate_recovery_codes(request)
    return redirect("accounts:security_recovery_codes")
