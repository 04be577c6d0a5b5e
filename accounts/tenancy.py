"""Resolving the organisation and the membership once per request.

Every organisation page is routed under /o/<org_slug>/ and wrapped in @tenant_view. The
decorator finds the signed-in user's active membership in that organisation (404 when there is
none, so outsiders cannot even confirm it exists), checks the role (403), and puts
`request.organisation` and `request.membership` on the request for the view and templates.
Views then fetch objects only through selectors scoped to `request.organisation`.
"""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from accounts.roles import ALL_ROLES
from accounts.selectors import membership_for_user

SESSION_KEY = "current_org"


def tenant_view(*, roles=ALL_ROLES, section: str | None = None):
    def decorator(view):
        @wraps(view)
        @login_required
        def wrapper(request, org_slug, *args, **kwargs):
            membership = membership_for_user(user=request.user, org_slug=org_slug)
            request.organisation = membership.organisation
            request.membership = membership
            request.settings_section = section
            if request.session.get(SESSION_KEY) != org_slug:
                request.session[SESSION_KEY] = org_slug
            if membership.role not in roles:
                raise PermissionDenied(
                    f"Your role ({membership.get_role_display()}) cannot open this page."
                )
            # Dates on organisation pages show in the organisation's time zone.
            timezone.activate(membership.organisation.tzinfo)
            try:
                return view(request, *args, **kwargs)
            finally:
                timezone.deactivate()

        return wrapper

    return decorator
