"""Resolving the organisation and the membership once per request.

Every organisation page is routed under /o/<org_slug>/ and wrapped in @tenant_view. The
decorator finds the signed-in user's active membership in that organisation (404 when there is
none, so outsiders cannot even confirm it exists), checks the role (403), and puts
`request.organisation` and `request.membership` on the request for the view and templates.
Views then fetch objects only through selectors scoped to `request.organisation`.

Once the organisation's subscription has ended (DESIGN.md section 2, Cancellation), its pages
are read-only: a change (POST, PUT, PATCH, DELETE) is refused with 403 unless the view is
declared with `allow_when_ended=True` (choosing a plan again, billing details, ...).
"""

from functools import wraps

from django.apps import apps
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from accounts.roles import ALL_ROLES
from accounts.selectors import membership_for_user

SESSION_KEY = "current_org"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
ENDED_MESSAGE = (
    "Your subscription has ended: your organisation's data can be viewed but no longer "
    "changed. Choose a plan to make changes again."
)


def subscription_has_ended(organisation) -> bool:
    """Whether the organisation's subscription has ended (one query; nothing cached).

    accounts sits below subscriptions, so the model is looked up by name, not imported.
    """
    subscription_model = apps.get_model("subscriptions", "Subscription")
    return subscription_model.objects.filter(
        organisation=organisation, status=subscription_model.Status.ENDED
    ).exists()


def tenant_view(*, roles=ALL_ROLES, section: str | None = None, allow_when_ended: bool = False):
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
            if (
                not allow_when_ended
                and request.method not in SAFE_METHODS
                and subscription_has_ended(membership.organisation)
            ):
                raise PermissionDenied(ENDED_MESSAGE)
            # Dates on organisation pages show in the organisation's time zone.
            timezone.activate(membership.organisation.tzinfo)
            try:
                return view(request, *args, **kwargs)
            finally:
                timezone.deactivate()

        return wrapper

    return decorator
