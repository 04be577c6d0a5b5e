from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from accounts import hooks
from accounts.audit import Actor
from accounts.billing_recipients import billing_recipient_check, billing_recipient_confirm
from accounts.forms import (
    InvitationForm,
    InvitationSignupForm,
    OrganisationForm,
    PrimaryEmailForm,
    RoleForm,
    TwoFactorPolicyForm,
)
from accounts.models import PrimaryEmailChange, User
from accounts.roles import ADMIN_ONLY, ALL_ROLES, sections_for
from accounts.selectors import (
    audit_event_list,
    invitation_get,
    invitation_list_pending,
    membership_get,
    membership_list,
    memberships_of_user,
    notification_list,
    notification_page,
)
from accounts.services import (
    LinkError,
    invitation_accept,
    invitation_accept_new_account,
    invitation_check,
    invitation_create,
    invitation_resend,
    invitation_revoke,
    membership_change_role,
    membership_deactivate,
    membership_reactivate,
    membership_remove,
    notifications_mark_seen,
    organisation_update,
    primary_email_change_check,
    primary_email_change_request,
    primary_email_change_verify,
)
from accounts.tenancy import SESSION_KEY, SSO_SESSION_KEY, tenant_view
from accounts.two_factor import has_two_factor
from accounts.two_factor_policy import (
    lacking_counts,
    organisation_two_factor_policy_set,
    setup_redirect,
    setup_required,
)
from core import ratelimit
from core.errors import ServiceError
from core.forms import form_error
from core.http import client_ip

NOTIFICATIONS_PER_PAGE = 20
LINK_ERROR_STATUS = {
    LinkError.INVALID: 404,
    LinkError.USED: 410,
    LinkError.REVOKED: 410,
    LinkError.EXPIRED: 410,
    LinkError.SUPERSEDED: 410,
}


def _org_url(request, name: str, *args) -> str:
    return reverse(name, args=[request.organisation.slug, *args])


# Signed-in landing ----------------------------------------------------------------------


def _landing_notices(user) -> list[str]:
    """What the apps above accounts tell the user on this page (accounts.hooks; e.g. which of
    their organisations were deleted)."""
    return [notice for notices in hooks.landing_notices for notice in notices(user)]


@login_required
def home(request):
    """Send the user to the organisation they used last, or let them choose one."""
    memberships = list(memberships_of_user(user=request.user))
    by_slug = {m.organisation.slug: m for m in memberships}
    current = request.session.get(SESSION_KEY)
    if current in by_slug:
        return redirect(hooks.overview_url(current))
    if len(memberships) == 1:
        return redirect(hooks.overview_url(memberships[0].organisation.slug))
    return _organisations_page(request, memberships)


@login_required
def organisations(request):
    return _organisations_page(request, list(memberships_of_user(user=request.user)))


def _organisations_page(request, memberships):
    return render(
        request,
        "accounts/organisations.html",
        {
            "memberships": memberships,
            "deleted_notices": _landing_notices(request.user),
        },
    )


@tenant_view(roles=ALL_ROLES)
@require_safe
def notifications(request):
    """Notifications: the emails sent to the organisation that this person may see, newest
    first, each listed once with its recipients (who sees what: `notification_rows` in
    accounts/selectors.py). Opening the page marks everything up to now as read."""
    organisation, user, membership = request.organisation, request.user, request.membership
    # Taken first, so an email arriving while the page renders stays unread.
    now = timezone.now()
    new_after = membership.notifications_seen_at or membership.created_at
    page = Paginator(
        notification_list(organisation=organisation, user=user, role=membership.role),
        NOTIFICATIONS_PER_PAGE,
    ).get_page(request.GET.get("page"))
    entries = notification_page(
        organisation=organisation,
        user=user,
        role=membership.role,
        messages=list(page.object_list),
        new_after=new_after,
    )
    notifications_mark_seen(membership=membership, now=now)
    # Everything here is now read: the top bar's marker needs no query on this page.
    request.notifications_unread = 0
    return render(request, "accounts/notifications.html", {"page": page, "notifications": entries})


@tenant_view(roles=ALL_ROLES)
@require_safe
def settings_index(request):
    sections = sections_for(request.membership.role)
    if not sections:
        raise PermissionDenied("Members have no Settings pages. Ask an Admin for what you need.")
    return redirect(sections[0].url_name, org_slug=request.organisation.slug)


# Settings > Users ------------------------------------------------------------------------


@tenant_view(roles=ADMIN_ONLY, section="users")
@require_safe
def users(request):
    return render(
        request,
        "accounts/users.html",
        {
            "memberships": membership_list(organisation=request.organisation),
            "invitations": invitation_list_pending(organisation=request.organisation),
            "now": timezone.now(),
        },
    )


@tenant_view(roles=ADMIN_ONLY, section="users")
def user_invite(request):
    form = InvitationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            invitation = invitation_create(
                organisation=request.organisation,
                actor=Actor.from_request(request),
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
                now=timezone.now(),
            )
        except ServiceError as error:
            form_error(form, error)
        else:
            messages.success(
                request,
                f"Invitation sent to {invitation.email} as {invitation.get_role_display()}. "
                f"The link is valid for 7 days.",
            )
            return redirect("accounts:users", org_slug=request.organisation.slug)
    return render(request, "accounts/user_invite.html", {"form": form})


@tenant_view(roles=ADMIN_ONLY, section="users")
@require_safe
def member_detail(request, member_id):
    membership = membership_get(organisation=request.organisation, public_id=member_id)
    return render(
        request,
        "accounts/member_detail.html",
        {"member": membership, "role_form": RoleForm(initial={"role": membership.role})},
    )


def _member_action(request, member_id, action, success_message):
    membership = membership_get(organisation=request.organisation, public_id=member_id)
    try:
        action(membership=membership, actor=Actor.from_request(request), now=timezone.now())
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, success_message.format(name=membership.user.display_name))
    return redirect(
        "accounts:member_detail", org_slug=request.organisation.slug, member_id=member_id
    )


@tenant_view(roles=ADMIN_ONLY, section="users")
@require_POST
def member_role(request, member_id):
    membership = membership_get(organisation=request.organisation, public_id=member_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the roles.")
    else:
        try:
            membership = membership_change_role(
                membership=membership,
                actor=Actor.from_request(request),
                role=form.cleaned_data["role"],
                now=timezone.now(),
            )
        except ServiceError as error:
            messages.error(request, error.message)
        else:
            messages.success(
                request,
                f"{membership.user.display_name} is now {membership.get_role_display()}.",
            )
    return redirect(
        "accounts:member_detail", org_slug=request.organisation.slug, member_id=member_id
    )


@tenant_view(roles=ADMIN_ONLY, section="users")
@require_POST
def member_deactivate(request, member_id):
    return _member_action(
        request,
        member_id,
        membership_deactivate,
        "{name} is deactivated and was signed out. Reactivate them here at any time.",
    )


@tenant_view(roles=ADMIN_ONLY, section="users")
@require_POST
def member_reactivate(request, member_id):
    return _member_action(request, member_id, membership_reactivate, "{name} is active again.")


@tenant_view(roles=ADMIN_ONLY, section="users")
def member_remove(request, member_id):
    membership = membership_get(organisation=request.organisation, public_id=member_id)
    if request.method == "POST":
        try:
            membership_remove(
                membership=membership, actor=Actor.from_request(request), now=timezone.now()
            )
        except ServiceError as error:
            messages.error(request, error.message)
            return redirect(
                "accounts:member_detail", org_slug=request.organisation.slug, member_id=member_id
            )
        messages.success(
            request,
            f"{membership.user.display_name} was removed and signed out. Their history stays.",
        )
        return redirect("accounts:users", org_slug=request.organisation.slug)
    return render(request, "accounts/member_remove.html", {"member": membership})


def _invitation_action(request, invitation_id, action, success_message):
    invitation = invitation_get(organisation=request.organisation, public_id=invitation_id)
    try:
        action(invitation=invitation, actor=Actor.from_request(request), now=timezone.now())
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, success_message.format(email=invitation.email))
    return redirect("accounts:users", org_slug=request.organisation.slug)


@tenant_view(roles=ADMIN_ONLY, section="users")
@require_POST
def invitation_resend_view(request, invitation_id):
    return _invitation_action(
        request,
        invitation_id,
        invitation_resend,
        "Invitation resent to {email}. The new link is valid for 7 days.",
    )


@tenant_view(roles=ADMIN_ONLY, section="users")
@require_POST
def invitation_revoke_view(request, invitation_id):
    return _invitation_action(
        request,
        invitation_id,
        invitation_revoke,
        "Invitation to {email} revoked; its link no longer works.",
    )


# Settings > Organisation -----------------------------------------------------------------


def _organisation_page(request, *, form=None, email_form=None, two_factor_form=None, status=200):
    organisation = request.organisation
    form = form or OrganisationForm(
        initial={"name": organisation.name, "time_zone": organisation.time_zone}
    )
    pending = PrimaryEmailChange.objects.filter(
        organisation=organisation, status=PrimaryEmailChange.Status.PENDING
    ).first()
    return render(
        request,
        "accounts/organisation.html",
        {
            "form": form,
            "email_form": email_form or PrimaryEmailForm(),
            "pending_change": pending,
            "two_factor_form": two_factor_form
            or TwoFactorPolicyForm(initial={"policy": organisation.two_factor_policy}),
            "own_two_factor": has_two_factor(request.user),
            "lacking_two_factor": lacking_counts(organisation=organisation),
        },
        status=status,
    )


@tenant_view(roles=ADMIN_ONLY, section="organisation")
def organisation_settings(request):
    if request.method != "POST":
        return _organisation_page(request)
    form = OrganisationForm(request.POST)
    if form.is_valid():
        try:
            organisation_update(
                organisation=request.organisation,
                actor=Actor.from_request(request),
                name=form.cleaned_data["name"],
                time_zone=form.cleaned_data["time_zone"],
                now=timezone.now(),
            )
        except ServiceError as error:
            form_error(form, error)
        else:
            messages.success(request, "Organisation details saved.")
            return redirect("accounts:organisation", org_slug=request.organisation.slug)
    return _organisation_page(request, form=form, status=400)


@tenant_view(roles=ADMIN_ONLY, section="organisation")
@require_POST
def organisation_two_factor(request):
    form = TwoFactorPolicyForm(request.POST)
    if form.is_valid():
        try:
            organisation = organisation_two_factor_policy_set(
                organisation=request.organisation,
                actor=Actor.from_request(request),
                policy=form.cleaned_data["policy"],
                now=timezone.now(),
            )
        except ServiceError as error:
            form_error(form, error)
        else:
            messages.success(
                request, f"Two-factor sign-in: {organisation.get_two_factor_policy_display()}."
            )
            return redirect("accounts:organisation", org_slug=organisation.slug)
    return _organisation_page(request, two_factor_form=form, status=400)


@tenant_view(roles=ADMIN_ONLY, section="organisation")
@require_POST
def organisation_primary_email(request):
    form = PrimaryEmailForm(request.POST)
    if form.is_valid():
        try:
            change = primary_email_change_request(
                organisation=request.organisation,
                actor=Actor.from_request(request),
                new_email=form.cleaned_data["new_email"],
                now=timezone.now(),
            )
        except ServiceError as error:
            form_error(form, error)
        else:
            messages.success(
                request,
                f"We sent a verification link to {change.new_email}. "
                f"{change.old_email} stays the primary email until it is used.",
            )
            return redirect("accounts:organisation", org_slug=request.organisation.slug)
    return _organisation_page(request, email_form=form, status=400)


@tenant_view(roles=ADMIN_ONLY, section="organisation")
@require_safe
def audit_log(request):
    page = Paginator(audit_event_list(organisation=request.organisation), 50).get_page(
        request.GET.get("page")
    )
    return render(request, "accounts/audit_log.html", {"page": page})


# Emailed links ---------------------------------------------------------------------------


def _guessing_refused(request):
    """A 429 once this address has opened too many unknown link tokens."""
    decision = ratelimit.peek(request, "link_invalid")
    return None if decision.allowed else ratelimit.too_many_requests(request, decision)


def _link_error(request, error: ServiceError, *, title: str, tone: str = "error"):
    if error.code == LinkError.INVALID:
        ratelimit.hit(request, "link_invalid")
    return render(
        request,
        "accounts/link_error.html",
        {"title": title, "message": error.message, "tone": tone},
        status=LINK_ERROR_STATUS.get(error.code, 400),
    )


def _welcome(request, membership):
    """The Overview of the organisation just joined; straight to the Security page first when
    its two-factor policy covers the new role and the person has no second factor yet."""
    organisation = membership.organisation
    messages.success(request, f"Welcome to {organisation.name}.")
    overview = hooks.overview_url(organisation.slug)
    sso_organisation_id = request.session.get(SSO_SESSION_KEY)
    if setup_required(membership, membership.user, sso_organisation_id=sso_organisation_id):
        return setup_redirect(request, organisation, next_url=overview)
    return redirect(overview)


@ratelimit.per_ip("invitation")
def invitation_accept_view(request, token):
    if refused := _guessing_refused(request):
        return refused
    now = timezone.now()
    try:
        invitation = invitation_check(token=token, now=now)
    except ServiceError as error:
        return _link_error(request, error, title="This invitation cannot be used")

    user = request.user
    if user.is_authenticated:
        if request.method == "POST":
            try:
                membership = invitation_accept(
                    token=token, user=user, ip_address=client_ip(request), now=now
                )
            except ServiceError as error:
                return _link_error(request, error, title="This invitation cannot be used")
            return _welcome(request, membership)
        return render(request, "accounts/invitation_accept.html", {"invitation": invitation})

    if User.objects.filter(email__iexact=invitation.email).exists():
        # The account exists: sign in first, then come back here to accept.
        return render(
            request,
            "accounts/invitation_accept.html",
            {
                "invitation": invitation,
                "login_url": f"{reverse('account_login')}?next={request.path}",
            },
        )
    form = InvitationSignupForm(request.POST or None, email=invitation.email)
    if request.method == "POST" and form.is_valid():
        try:
            membership = invitation_accept_new_account(
                token=token,
                full_name=form.cleaned_data["full_name"],
                password=form.cleaned_data["password"],
                ip_address=client_ip(request),
                now=now,
            )
        except ServiceError as error:
            return _link_error(request, error, title="This invitation cannot be used")
        login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
        return _welcome(request, membership)
    return render(
        request, "accounts/invitation_signup.html", {"invitation": invitation, "form": form}
    )


@ratelimit.per_ip("primary_email_verify")
def primary_email_verify(request, token):
    if refused := _guessing_refused(request):
        return refused
    now = timezone.now()
    try:
        change = primary_email_change_check(token=token, now=now)
    except ServiceError as error:
        return _link_error(request, error, title="This verification link cannot be used")
    if request.method == "POST":
        try:
            change = primary_email_change_verify(
                token=token, actor=Actor.from_request(request), now=now
            )
        except ServiceError as error:
            return _link_error(request, error, title="This verification link cannot be used")
        return render(request, "accounts/primary_email_verified.html", {"change": change})
    return render(request, "accounts/primary_email_verify.html", {"change": change})


@ratelimit.per_ip("billing_recipient_confirm", "20/m")
def billing_recipient_confirm_view(request, token):
    """The link in the confirmation email. No sign-in: the mailbox holder usually has no
    account. GET asks, POST confirms, so a mail scanner that opens links confirms nothing."""
    if refused := _guessing_refused(request):
        return refused
    now = timezone.now()
    try:
        recipient = billing_recipient_check(token=token, now=now)
        if request.method == "POST":
            recipient = billing_recipient_confirm(
                token=token, ip_address=client_ip(request), now=now
            )
    except ServiceError as error:
        if error.code == LinkError.USED:  # a second click: nothing wrong, nothing to do
            return _link_error(request, error, title="Already confirmed", tone="info")
        return _link_error(request, error, title="This confirmation link cannot be used")
    if request.method == "POST":
        return render(
            request, "accounts/billing_recipient_confirmed.html", {"recipient": recipient}
        )
    return render(request, "accounts/billing_recipient_confirm.html", {"recipient": recipient})
