"""Resolving the organisation and the membership once per request.

Every organisation page is routed under /o/<org_slug>/ and wrapped in @tenant_view. The
decorator finds the signed-in user's active membership in that organisation (404 when there is
none, so outsiders cannot even confirm it exists), checks the role (403), and puts
`request.organisation` and `request.membership` on the request for the view and templates.
Views then fetch objects only through selectors scoped to `request.organisation`.

The apps above accounts add their own rules through accounts.hooks (composed in portal.frame):
the access gates run before the role check (single sign-on: a session from organisation A's
IdP opens only A, and an enforcing organisation opens only to its IdP's sessions); then the
organisation's two-factor policy sends a person it covers who has no second factor to set one
up (accounts.two_factor_policy); the write guards refuse a change (POST, PUT, PATCH, DELETE)
with 403 unless the view is declared with `allow_when_ended=True` (once the subscription has
ended the pages are read-only, except choosing a plan again, billing details, ...).
See docs/architecture.md#accounts.
"""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from accounts import hooks
from accounts.roles import ALL_ROLES
from accounts.selectors import membership_for_user
from accounts.two_factor_policy import setup_redirect, setup_required
from core.observability import log_context

SESSION_KEY = "current_org"
# Set by the SSO sign-in: the id of the organisation whose IdP vouched for this session.
SSO_SESSION_KEY = "sso_organisation_id"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def password_sign_in_refusal(user) -> str | None:
    """Why `user` may not sign in with a password (the first registered check that refuses),
    or None."""
    for check in hooks.password_sign_in_checks:
        refusal = check(user)
        if refusal:
            return refusal
    return None


def tenant_view(*, roles=ALL_ROLES, section: str | None = None, allow_when_ended: bool = False):
    def decorator(view):
        @wraps(view)
        @login_required
        def wrapper(request, org_slug, *args, **kwargs):
            membership = membership_for_user(user=request.user, org_slug=org_slug)
            request.organisation = membership.organisation
            request.membership = membership
            request.settings_section = section
            for gate in hooks.access_gates:
                response = gate(request, membership)
                if response is not None:
                    return response
            # After the access gates (SSO wins), before anything else: a person the
            # organisation's two-factor policy covers, without a second factor, may only go
            # set one up (docs/architecture.md#decision-two-factor-policy-gate).
            if setup_required(
                membership, request.user, sso_organisation_id=request.session.get(SSO_SESSION_KEY)
            ):
                return setup_redirect(
                    request, membership.organisation, next_url=request.get_full_path()
                )
            if request.session.get(SESSION_KEY) != org_slug:
                request.session[SESSION_KEY] = org_slug
            if membership.role not in roles:
                raise PermissionDenied(
                    f"Your role ({membership.get_role_display()}) cannot open this page."
                )
            if not allow_when_ended and request.method not in SAFE_METHODS:
                for guard in hooks.write_guards:
                    refusal = guard(membership)
                    if refusal:
                        raise PermissionDenied(refusal)
            # Dates on organisation pages show in the organisation's time zone.
            timezone.activate(membership.organisation.tzinfo)
            try:
                # Every log line of the view names the organisation (core/observability).
                with log_context(organisation_id=membership.organisation_id):
                    return view(request, *args, **kwargs)
            finally:
                timezone.deactivate()

        # Who may open the page, for links that must never lead to a 403
        # (accounts.notification_links); functools.wraps carries it through outer decorators.
        wrapper.tenant_roles = frozenset(roles)
        return wrapper

    return decorator
