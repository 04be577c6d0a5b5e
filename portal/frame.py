"""The frame of the organisation pages, composed from the apps above accounts.

accounts.tenancy.tenant_view resolves the membership and runs the hooks of accounts.hooks;
this module plugs in what subscriptions, sso, billing and retention add to it (install(),
called by PortalConfig.ready):

- single sign-on: a session that began through organisation A's IdP opens only A; an
  organisation that enforces SSO opens only to sessions from its own IdP, except for its
  backup admin, and refuses password sign-in to people it enforces SSO on;
- once the organisation's subscription has ended, its pages are read-only: a change is
  refused with 403 unless the view is declared with `allow_when_ended=True`;
- whether a dunning case is open, read with the membership, so the failed-payment banner
  (billing.context_processors) costs nothing for an account in good standing;
- the notices about deleted organisations on the page listing the user's organisations;
- the top bar's links to the Overview (portal.views), ProcessFlows and Sync Info, and the
  Settings pages of the apps above.

See docs/architecture.md#portal.
"""

from django.db.models import Exists, F, OuterRef
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode

from accounts import hooks
from accounts.roles import ADMIN_AND_BILLING, ADMIN_ONLY, SettingsSection
from accounts.selectors import memberships_of_user
from accounts.tenancy import SSO_SESSION_KEY
from billing.models import DunningCase
from retention.selectors import deleted_organisation_notices
from sso.models import SsoConfiguration
from subscriptions.models import Subscription
from subscriptions.selectors import subscription_has_ended

# The Settings pages of the apps above accounts, placed among accounts' own (Users 30,
# Organisation 40) in the article's order.
SETTINGS_SECTIONS = (
    SettingsSection(
        "subscription", "Subscription", "subscriptions:settings", ADMIN_AND_BILLING, 10
    ),
    SettingsSection("billing", "Billing", "billing:settings", ADMIN_AND_BILLING, 20),
    SettingsSection("sso", "SSO", "sso:settings", ADMIN_ONLY, 50),
    SettingsSection("privacy", "Privacy", "retention:privacy", ADMIN_ONLY, 60),
)

ENDED_MESSAGE = (
    "Your subscription has ended: your organisation's data can be viewed but no longer "
    "changed. Choose a plan to make changes again."
)


# Single sign-on ------------------------------------------------------------------------


def sso_annotations() -> dict:
    """`sso_enforced` and `sso_backup_admin_id` from the organisation's SSO configuration
    (None without one): the first check of sso_required, free with the membership."""
    return {
        "sso_enforced": F("organisation__sso_configuration__enforced"),
        "sso_backup_admin_id": F("organisation__sso_configuration__backup_admin_id"),
    }


def _sso_enforcing(user, organisation_ids):
    """Configurations among `organisation_ids` that enforce SSO on `user`: enforced, on a plan
    with SSO that has not ended, and `user` not their backup admin."""
    return (
        SsoConfiguration.objects.filter(
            organisation_id__in=organisation_ids,
            enforced=True,
            organisation__subscription__plan__allows_sso=True,
        )
        .exclude(organisation__subscription__status=Subscription.Status.ENDED)
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


def sso_gate(request, membership):
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


def sso_password_refusal(user) -> str | None:
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


# Subscription ended ----------------------------------------------------------------------


def ended_guard(membership) -> str | None:
    """Refuses changes once the organisation's subscription has ended (one query)."""
    if subscription_has_ended(organisation=membership.organisation):
        return ENDED_MESSAGE
    return None


# Failed payments -------------------------------------------------------------------------


def dunning_annotations() -> dict:
    """`dunning_open`: the organisation has an open dunning case; without one there is no
    failed-payment banner (billing.context_processors)."""
    return {
        "dunning_open": Exists(
            DunningCase.objects.filter(
                organisation=OuterRef("organisation"), status=DunningCase.Status.OPEN
            )
        )
    }


# Notifications ---------------------------------------------------------------------------

INVOICES = ("billing:invoices", "Invoice History")
# The invoice's own row: Invoice History filtered to the number in the email's subject.
INVOICE_ROW = ("billing:invoices", "Invoice History", ("number", r"\bINV-\d{4}-\d{6}\b"))
CONFIRM_PAYMENT = ("billing:confirm_payment", "Confirm payment")
PAYMENT_METHOD = ("billing:payment_method", "Payment method")
SUBSCRIPTION = ("subscriptions:settings", "Subscription")
PRIVACY = ("retention:privacy", "Privacy and data")
TICKET = ("support:ticket", "Support ticket")

# Per email (templates/emails/<name>/), the pages where its action is, best first: the first
# the email links to (or that needs no object) and the reader's role may open
# (accounts.notification_links). Emails whose action is done by the link itself (data_deleted:
# sign in again) have none.
NOTIFICATION_PAGES = {
    "invoice_issued": (INVOICE_ROW,),
    "payment_receipt": (INVOICE_ROW,),
    "credit_note_issued": (("billing:credit_note_pdf", "Credit note PDF"), INVOICES),
    "payment_action_required": (CONFIRM_PAYMENT, INVOICE_ROW),
    "payment_failed": (PAYMENT_METHOD,),
    "payment_reminder": (CONFIRM_PAYMENT, PAYMENT_METHOD),
    "payment_overdue": (PAYMENT_METHOD,),
    "grace_period": (CONFIRM_PAYMENT, PAYMENT_METHOD),
    "account_suspended": (CONFIRM_PAYMENT, PAYMENT_METHOD),
    "dispute_lost": (PAYMENT_METHOD, INVOICE_ROW),
    "card_expiring": (PAYMENT_METHOD,),
    "service_restored": (SUBSCRIPTION,),
    "downgrade_scheduled": (SUBSCRIPTION,),
    "downgrade_applied": (SUBSCRIPTION,),
    "usage_alert": (SUBSCRIPTION,),
    "usage_forecast": (SUBSCRIPTION, ("usage:alerts", "Usage alerts")),
    "subscription_cancelled": (SUBSCRIPTION,),
    "subscription_ended": (("billing:choose_plan", "Choose a plan"), SUBSCRIPTION),
    "data_deletion_reminder": (SUBSCRIPTION, PRIVACY),
    "deletion_request_received": (PRIVACY,),
    "deletion_request_approved": (PRIVACY,),
    "deletion_request_rejected": (PRIVACY,),
    "deletion_request_done": (PRIVACY,),
    "sso_certificate_expiring": (("sso:settings", "SSO settings"),),
    "support_ticket_received": (TICKET, ("support:tickets", "Support")),
    "support_ticket_reply": (TICKET, ("support:tickets", "Support")),
    "support_ticket_closed": (TICKET, ("support:tickets", "Support")),
    "invitation": (("accounts:users", "Users"),),
    "billing_recipient_confirm": (("billing:recipients", "Billing recipients"),),
    "primary_email_verify": (("accounts:organisation", "Organisation"),),
    "primary_email_change_requested": (("accounts:organisation", "Organisation"),),
    "primary_email_changed": (("accounts:organisation", "Organisation"),),
    "two_factor_policy_changed": (("accounts:organisation", "Organisation"),),
}


def install() -> None:
    """Plug the frame's concerns into accounts.hooks (idempotent)."""
    hooks.membership_annotations_add(sso_annotations)
    hooks.membership_annotations_add(dunning_annotations)
    hooks.access_gate_add(sso_gate)
    hooks.write_guard_add(ended_guard)
    hooks.password_sign_in_check_add(sso_password_refusal)
    hooks.landing_notices_add(deleted_organisation_notices)
    hooks.menu_urls_add(
        overview="portal:overview", flows="subscriptions:flows", sync_info="usage:sync_info"
    )
    for section in SETTINGS_SECTIONS:
        hooks.settings_section_add(section)
    for template, pages in NOTIFICATION_PAGES.items():
        hooks.notification_links_add(template, *pages)
