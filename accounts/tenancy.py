"""Resolving the organisation and the membership once per request.

Every organisation page is routed under /o/<org_slug>/ and wrapped in @tenant_view. The
decorator finds the signed-in user's active membership in that organisation (404 when there is
none, so outsiders cannot even confirm it exists), checks the role (403), and puts
`request.organisation` and `request.membership` on the request for the view and templates.
Views then fetch objects only through selectors scoped to `request.organisation`.

Single sign-on (DESIGN.md section 2, SSO): a session that began through organisation A's IdP
opens only A; and an organisation that enforces SSO opens only to sessions from its own IdP,
except for its backup admin. Either way the person is sent to sign in the right way.

Once the organisation's subscription has ended (DESIGN.md section 2, Cancellation), its pages
are read-only: a change (POST, PUT, PATCH, DELETE) is refused with 403 unless the view is
declared with `allow_when_ended=True` (choosing a plan again, billing details, ...).
"""

from functools import wraps

from django.apps import apps
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from accounts.roles import ALL_ROLES
from accounts.selectors import membership_for_user, memberships_of_user
from core.observability import log_context

SESSION_KEY = "current_org"
# Set by the SSO sign-in: the id of the organisation whose IdP vouched for this session.
SSO_SESSION_KEY = "sso_organisation_id"
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


def _sso_enforcing(user, organisation_ids):
    """Configurations among `organisation_ids` that enforce SSO on `user`: enforced, on a plan
    with SSO that has not ended, and `user` not their backup admin. The sso app sits above
    accounts, so its model is looked up by name."""
    configuration_model = apps.get_model("sso", "SsoConfiguration")
    subscription_model = apps.get_model("subscriptions", "Subscription")
    return (
        configuration_model.objects.filter(
            organisation_id__in=organisation_ids,
            enforced=True,
            organisation__subscription__plan__allows_sso=True,
        )
        .exclude(organisation__subscription__status=subscription_model.Status.ENDED)
        .exclude(backup_admin=user)
    )


def sso_required(membership, user) -> bool:
    """Whether the organisation of `membership` (from membership_for_user) enforces SSO on
    `user`. Its SSO configuration, read with the membership, answers for most pages: not
    enforced, or `user` is its backup admin. Only when enforcement is on is the plan looked at
    (one query)."""
    if not membership.sso_enforced or membership.sso_backup_admin_id == user.pk:
        return False
    return _sso_enforcing(user, [membership.organisation_id]).exists()


def password_sign_in_refusal(user) -> str | None:
    """Why `user` may not sign in with a password, or None.

    Refused when every organisation they belong to enforces SSO on them: a password would open
    nothing. Someone with another organisation still signs in, and each enforcing
    organisation then sends them through its IdP.
    """
    organisation_ids = list(
        memberships_of_user(user=user).values_list("organisation_id", flat=True)
    )
    if not organisation_ids:
        return None
    enforcing = dict(
        _sso_enforcing(user, organisation_ids).values_list("organisation_id", "organisation__name")
    )
    if len(enforcing) < len(organisation_ids):
        return None
    names = ", ".join(sorted(enforcing.values()))
    return f"{names} requires single sign-on: use Sign in with SSO with your work email."


def _sso_gate(request, membership):
    """A response sending the person to sign in the right way, or None when the session may
    open the organisation of `membership` (from membership_for_user)."""
    organisation = membership.organisation
    sso_organisation_id = request.session.get(SSO_SESSION_KEY)
    if sso_organisation_id is not None and sso_organisation_id != organisation.pk:
        return render(
            request,
            "sso/other_organisation.html",
            {"organisation": organisation},
            status=403,
        )
    if sso_organisation_id is None and sso_required(membership, request.user):
        login_url = reverse("sso:login", args=[organisation.slug])
        return redirect(f"{login_url}?{urlencode({'next': request.get_full_path()})}")
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
            gate = _sso_gate(request, membership)
            if gate is not None:
                return gate
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
                # Every log line of the view names the organisation (core/observability).
                with log_context(organisation_id=membership.organisation_id):
                    return view(request, *args, **kwargs)
            finally:
                timezone.deactivate()

        return wrapper

    return decorator
