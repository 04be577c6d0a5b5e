"""Who gets what on every URL of the project
(docs/architecture.md#decision-every-url-has-a-permission-row).

The URL list comes from the resolver (`url_patterns()`), so a new view is covered without anyone
remembering: a pattern missing from TABLE fails `test_every_url_has_a_row`, naming it, and a row
whose pattern is gone fails too. Each role's test then requests every URL with GET and with POST
and compares the outcome with the row.

Roles: anonymous; the Member, Billing contact and Admin of organisation A (conftest's org,
member, billing, admin); the Admin of organisation B (outsider); ops staff, a Django `is_staff`
user in the "Billing staff" group (support/staff.py: every view permission of our apps, the
money permissions, no add/change/delete) with no membership. A superuser is deliberately not
used: it would hide every permission check behind "may do everything".

Outcomes: an HTTP status (200, 400, 403, 404, 405, ...); LOGIN, a 302 to the portal's sign-in
page with ?next= the URL asked for; ADMIN_LOGIN, the same to Django admin's login; to(target),
a 302 anywhere else (a URL name, reversed with A's slug when it needs one, or a literal URL).
An exception in a view shows as "500 <exception>" and never matches a row.

How to add a URL: add a row under its key, the URL name with its namespace
("support:ticket", "admin:support_ticket_reply"); an unnamed pattern is keyed by its route.
  - an organisation page (/o/<org_slug>/...): org(get=(Member, Billing, Admin), post=(...)).
    Anonymous gets LOGIN, the outsider and ops staff 404, for GET and POST alike;
  - any other URL: public(get=(anonymous, Member, Billing, Admin, outsider, ops), post=(...));
  - a Django admin view: ops(get=..., post=...); everyone else gets ADMIN_LOGIN. The generic
    ModelAdmin views (changelist, add, change, delete, history and the bare object URL that
    redirects to change) are covered by ADMIN_FAMILY, one row per kind for every model; list a
    custom admin view (get_urls) explicitly in TABLE.
A new URL parameter needs a value in `World.values` (or `World.admin_object`): the test says
which. Object parameters (ending in _id or _number) are also tried, by A's three roles, with
organisation B's ids under A's slug: the answer is 404, or the same 403/405 as for A's own
object (refused before any lookup, so it reveals nothing).

Every request runs in a savepoint that is rolled back afterwards, so every request starts from
the same data; before that, a refused one (LOGIN, ADMIN_LOGIN, 403, 404, 405) must have written
no row to any table (Postgres's per-transaction counters, pg_stat_xact_user_tables), the session
excepted. POSTs carry a payload that would change something if it got through.
"""

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote, urlsplit

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import connection, transaction
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import OutgoingEmail, PrimaryEmailChange
from accounts.tokens import new_token
from billing.models import (
    BalanceEntry,
    BillingProfile,
    CreditNote,
    Dispute,
    DunningCase,
    Invoice,
    LedgerViolation,
    OverageCharge,
    Payment,
    PaymentMethod,
    ReconciliationDifference,
    StripeEvent,
)
from devkit.saml_idp import TestIdP
from retention.models import DataDeletionRequest, DeletionRecord
from sso import configuration as sso_configuration
from sso.models import SsoAttempt
from support import staff
from tests.accounts.factories import InvitationFactory, UserFactory
from tests.accounts.sessions import signed_in_session
from tests.accounts.tenancy_objects import billing_recipient_of, organisation_objects
from tests.subscriptions.factories import ConnectionFactory, SubscriptionFactory, plan
from usage.models import UsageAlert
from usage.months import usage_month_of

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "member", "billing", "admin", "outsider", "ops")
OWN_ROLES = ("member", "billing", "admin")

LOGIN = "login"
ADMIN_LOGIN = "admin login"
DENIED = (LOGIN, ADMIN_LOGIN, 403, 404, 405)


@dataclass(frozen=True)
class To:
    """A 302 to `target`: a URL name (reversed with A's slug when it takes one) or a URL."""

    target: str

    def __str__(self):
        return f"302 {self.target}"


def to(target):
    return To(target)


@dataclass(frozen=True)
class Row:
    get: dict
    post: dict


def org(*, get, post):
    """An organisation page; `get` and `post` are the (Member, Billing contact, Admin) outcomes."""
    outside = {"anonymous": LOGIN, "outsider": 404, "ops": 404}
    return Row(
        get={**outside, **dict(zip(OWN_ROLES, get, strict=True))},
        post={**outside, **dict(zip(OWN_ROLES, post, strict=True))},
    )


def public(*, get, post):
    """Any other URL; `get` and `post` are one outcome for every role, or one per role in
    ROLES order."""

    def per_role(outcomes):
        if not isinstance(outcomes, tuple):
            outcomes = (outcomes,) * len(ROLES)
        return dict(zip(ROLES, outcomes, strict=True))

    return Row(get=per_role(get), post=per_role(post))


def signed_in(outcome, *, anonymous=LOGIN):
    """`outcome` for every signed-in role, `anonymous` for the anonymous visitor."""
    return (anonymous, *(outcome,) * (len(ROLES) - 1))


def ops(*, get, post):
    """A Django admin view: only ops staff get past the admin login."""
    return Row(
        get={**dict.fromkeys(ROLES, ADMIN_LOGIN), "ops": get},
        post={**dict.fromkeys(ROLES, ADMIN_LOGIN), "ops": post},
    )


HOME = to("accounts:home")
REAUTH = to("account_reauthenticate")
IDP = to("https://idp.example.test/sso")  # the test IdP's sign-in URL (devkit/saml_idp.py)
TO_CHANGE = to("./change/")  # the change page of the object asked for

TABLE = {
    # Organisation pages: org(get=(Member, Billing contact, Admin), post=(...)). ------------
    "portal:overview": org(get=(200, 200, 200), post=(405, 405, 405)),
    "accounts:notifications": org(get=(200, 200, 200), post=(405, 405, 405)),
    "accounts:settings": org(
        get=(403, to("subscriptions:settings"), to("subscriptions:settings")),
        post=(405, 405, 405),
    ),
    "accounts:users": org(get=(403, 403, 200), post=(403, 403, 405)),
    "accounts:user_invite": org(get=(403, 403, 200), post=(403, 403, to("accounts:users"))),
    "accounts:member_detail": org(get=(403, 403, 200), post=(403, 403, 405)),
    "accounts:member_role": org(get=(403, 403, 405), post=(403, 403, to("accounts:member_detail"))),
    "accounts:member_deactivate": org(
        get=(403, 403, 405), post=(403, 403, to("accounts:member_detail"))
    ),
    "accounts:member_reactivate": org(
        get=(403, 403, 405), post=(403, 403, to("accounts:member_detail"))
    ),
    "accounts:member_remove": org(get=(403, 403, 200), post=(403, 403, to("accounts:users"))),
    "accounts:invitation_resend": org(get=(403, 403, 405), post=(403, 403, to("accounts:users"))),
    "accounts:invitation_revoke": org(get=(403, 403, 405), post=(403, 403, to("accounts:users"))),
    "accounts:organisation": org(get=(403, 403, 200), post=(403, 403, 400)),
    "accounts:organisation_primary_email": org(
        get=(403, 403, 405), post=(403, 403, to("accounts:organisation"))
    ),
    # The matrix's Admin has no second factor: the policy form refuses it (400, nothing written).
    "accounts:organisation_two_factor": org(get=(403, 403, 405), post=(403, 403, 400)),
    "accounts:audit_log": org(get=(403, 403, 200), post=(403, 403, 405)),
    "subscriptions:flows": org(get=(200, 200, 200), post=(405, 405, 405)),
    "subscriptions:flow_create": org(get=(403, 403, 405), post=(403, 403, 400)),
    "subscriptions:environment_create": org(get=(403, 403, 405), post=(403, 403, 400)),
    "subscriptions:connection_create": org(get=(403, 403, 405), post=(403, 403, 400)),
    "subscriptions:flow_pause": org(
        get=(403, 403, 405), post=(403, 403, to("subscriptions:flows"))
    ),
    "subscriptions:flow_resume": org(
        get=(403, 403, 405), post=(403, 403, to("subscriptions:flows"))
    ),
    "subscriptions:settings": org(get=(403, 200, 200), post=(403, 405, 405)),
    "subscriptions:change_plan": org(get=(403, 403, 200), post=(403, 403, 405)),
    "subscriptions:change_plan_review": org(
        get=(403, 403, 200), post=(403, 403, to("subscriptions:settings"))
    ),
    "subscriptions:scheduled_change_cancel": org(
        get=(403, 403, 405), post=(403, 403, to("subscriptions:settings"))
    ),
    "subscriptions:cancel": org(get=(403, 403, 200), post=(403, 403, 400)),
    "subscriptions:cancel_undo": org(
        get=(403, 403, 405), post=(403, 403, to("subscriptions:settings"))
    ),
    "billing:settings": org(
        get=(403, to("billing:invoices"), to("billing:invoices")),
        post=(403, 405, 405),
    ),
    "billing:invoices": org(get=(403, 200, 200), post=(403, 405, 405)),
    # Invoice History > Export CSV: the filtered list, to the same roles as the page.
    "billing:invoices_export": org(get=(403, 200, 200), post=(403, 405, 405)),
    "billing:balance": org(get=(403, 200, 200), post=(403, 405, 405)),
    "billing:invoice_pdf": org(get=(403, 200, 200), post=(403, 405, 405)),
    "billing:invoice_revised_pdf": org(get=(403, 200, 200), post=(403, 405, 405)),
    "billing:credit_note_pdf": org(get=(403, 200, 200), post=(403, 405, 405)),
    # A's invoice is open with a charge under way: confirming says it is being processed.
    "billing:confirm_payment": org(get=(403, 200, 200), post=(403, 200, 200)),
    "billing:payment_method": org(get=(403, 200, 200), post=(403, 400, 400)),
    "billing:retry_payment": org(
        get=(403, 405, 405),
        post=(403, to("billing:payment_method"), to("billing:payment_method")),
    ),
    "billing:billing_information": org(get=(403, 200, 200), post=(403, 400, 400)),
    # Billing recipients: the payload's address is added (a confirmation link is emailed);
    # A's recipient was just sent its link, so Resend is refused with a message.
    "billing:recipients": org(
        get=(403, 200, 200), post=(403, to("billing:recipients"), to("billing:recipients"))
    ),
    "billing:recipient_resend": org(
        get=(403, 405, 405), post=(403, to("billing:recipients"), to("billing:recipients"))
    ),
    "billing:recipient_remove": org(
        get=(403, 405, 405), post=(403, to("billing:recipients"), to("billing:recipients"))
    ),
    # A is subscribed: choosing a plan and checking out lead back to Settings > Subscription,
    # and Enterprise has nothing to upgrade to, so confirming goes back to the upgrade page.
    "billing:choose_plan": org(
        get=(403, 403, to("subscriptions:settings")),
        post=(403, 403, 405),
    ),
    "billing:checkout": org(
        get=(403, 403, to("subscriptions:settings")),
        post=(403, 403, to("subscriptions:settings")),
    ),
    "billing:usage_history": org(get=(403, 200, 200), post=(403, 405, 405)),
    "billing:usage_history_csv": org(get=(403, 200, 200), post=(403, 405, 405)),
    "billing:usage_month": org(get=(403, 200, 200), post=(403, 405, 405)),
    "billing:upgrade": org(get=(403, 403, 200), post=(403, 403, 405)),
    "billing:upgrade_confirm": org(
        get=(403, 403, to("billing:upgrade")), post=(403, 403, to("billing:upgrade"))
    ),
    "sso:settings": org(get=(403, 403, 200), post=(403, 403, 405)),
    "sso:idp_save": org(get=(403, 403, 405), post=(403, 403, 400)),
    "sso:domain_add": org(get=(403, 403, 405), post=(403, 403, 400)),
    "sso:domain_remove": org(get=(403, 403, 405), post=(403, 403, to("sso:settings"))),
    "sso:provisioning_save": org(get=(403, 403, 405), post=(403, 403, 400)),
    "sso:enforcement_save": org(get=(403, 403, 405), post=(403, 403, to("sso:settings"))),
    # A Member sees only the tickets they opened; A's ticket was opened by someone else.
    "support:tickets": org(get=(200, 200, 200), post=(400, 400, 400)),
    "support:ticket": org(
        get=(404, 200, 200), post=(404, to("support:ticket"), to("support:ticket"))
    ),
    "support:attachment": org(get=(404, 200, 200), post=(405, 405, 405)),
    "retention:privacy": org(get=(403, 403, 200), post=(403, 403, 200)),
    "retention:configuration_export": org(get=(403, 403, 200), post=(403, 403, 405)),
    "usage:sync_info": org(get=(200, 200, 200), post=(405, 405, 405)),
    "usage:sync_info_export": org(get=(200, 200, 200), post=(405, 405, 405)),
    "usage:api_keys": org(get=(403, 403, 200), post=(403, 403, 405)),
    "usage:api_key_create": org(get=(403, 403, 405), post=(403, 403, 400)),
    "usage:api_key_revoke": org(get=(403, 403, 200), post=(403, 403, to("usage:api_keys"))),
    "usage:alerts": org(get=(403, 403, 200), post=(403, 403, 405)),
    "usage:alert_threshold_add": org(get=(403, 403, 405), post=(403, 403, 400)),
    "usage:alert_threshold_remove": org(get=(403, 403, 405), post=(403, 403, to("usage:alerts"))),
    "usage:forecast_alert": org(get=(403, 403, 405), post=(403, 403, 400)),
    # The portal outside organisations. public(get=..., post=...) in ROLES order:
    # (anonymous, Member, Billing contact, Admin, outsider, ops). -----------------------------
    "accounts:home": public(
        get=(LOGIN, *(to("portal:overview"),) * 3, to("/o/globex/"), 200),
        post=(LOGIN, *(to("portal:overview"),) * 3, to("/o/globex/"), 200),
    ),
    "accounts:organisations": public(get=signed_in(200), post=signed_in(200)),
    # Emailed links: the token is the key. A's pending invitation is for someone else, so a
    # signed-in person cannot accept it (400); anyone may verify the primary email change.
    "accounts:invitation_accept": public(get=200, post=signed_in(400, anonymous=200)),
    "accounts:primary_email_verify": public(get=200, post=200),
    # A billing recipient's confirmation link: no sign-in, anyone with the link confirms.
    "accounts:billing_recipient_confirm": public(get=200, post=200),
    # Ending sessions from Security: POST only; A's Admin ends their other session, anyone
    # else asking for it gets a 404 (and ends nothing: see MAY_WRITE).
    "accounts:session_end": public(
        get=405, post=(LOGIN, 404, 404, to("accounts:security"), 404, 404)
    ),
    "accounts:sessions_end_others": public(get=405, post=signed_in(to("accounts:security"))),
    # Public SAML endpoints of A (SSO configured, not enforced); Test SSO may be forwarded to
    # a colleague who is not signed in (README, Single sign-on).
    "sso:sign_in": public(get=200, post=400),
    "sso:metadata": public(get=200, post=405),
    "sso:login": public(get=IDP, post=405),
    "sso:test": public(get=200, post=IDP),
    "sso:acs": public(get=405, post=400),
    # Machine endpoints: API keys, Stripe's signature; no session counts.
    "usage:api_sync_info": public(get=405, post=401),
    "usage:api_flows": public(get=401, post=405),
    "usage:api_openapi": public(get=200, post=405),
    "usage:api_not_found": public(get=404, post=404),
    "stripe_webhook": public(get=405, post=400),
    "healthz": public(get=200, post=405),
    # django-allauth (keys and codes are made up, so those pages say the link is invalid).
    # Security and two-factor sign-in (accounts/security_views.py, allauth.mfa). Changing a
    # second factor asks for the password again first (allauth's reauthentication).
    "accounts:security": public(get=signed_in(200), post=signed_in(405)),
    "accounts:security_totp_activate": public(get=signed_in(REAUTH), post=signed_in(REAUTH)),
    "accounts:security_totp_deactivate": public(
        get=signed_in(to("accounts:security")), post=signed_in(to("accounts:security"))
    ),
    "accounts:security_recovery_codes": public(
        get=signed_in(to("accounts:security")), post=signed_in(to("accounts:security"))
    ),
    "accounts:security_recovery_codes_regenerate": public(
        get=signed_in(405), post=signed_in(REAUTH)
    ),
    # allauth.mfa's management pages send everyone to the Security page's own
    # (accounts.middleware.AllauthManagementPagesMiddleware).
    "mfa_index": public(get=to("accounts:security"), post=to("accounts:security")),
    "mfa_authenticate": public(
        get=signed_in(to("/"), anonymous=to("account_login")),
        post=signed_in(to("/"), anonymous=to("account_login")),
    ),
    "mfa_reauthenticate": public(get=signed_in(REAUTH), post=signed_in(REAUTH)),
    "mfa_activate_totp": public(
        get=to("accounts:security_totp_activate"), post=to("accounts:security_totp_activate")
    ),
    "mfa_deactivate_totp": public(
        get=to("accounts:security_totp_deactivate"), post=to("accounts:security_totp_deactivate")
    ),
    "mfa_view_recovery_codes": public(
        get=to("accounts:security_recovery_codes"), post=to("accounts:security_recovery_codes")
    ),
    "mfa_generate_recovery_codes": public(
        get=to("accounts:security"), post=to("accounts:security")
    ),
    "mfa_download_recovery_codes": public(
        get=to("accounts:security_recovery_codes"), post=to("accounts:security_recovery_codes")
    ),
    "mfa_list_webauthn": public(get=signed_in(200), post=signed_in(405)),
    "mfa_add_webauthn": public(
        get=signed_in(REAUTH, anonymous=to("account_login")),
        post=signed_in(REAUTH, anonymous=to("account_login")),
    ),
    "mfa_reauthenticate_webauthn": public(get=signed_in(REAUTH), post=signed_in(REAUTH)),
    "mfa_remove_webauthn": public(
        get=signed_in(REAUTH, anonymous=to("account_login")),
        post=signed_in(REAUTH, anonymous=to("account_login")),
    ),
    "mfa_edit_webauthn": public(
        get=signed_in(REAUTH, anonymous=to("account_login")),
        post=signed_in(REAUTH, anonymous=to("account_login")),
    ),
    "account_login": public(
        get=signed_in(HOME, anonymous=200), post=signed_in(HOME, anonymous=200)
    ),
    "account_logout": public(get=signed_in(200, anonymous=HOME), post=HOME),
    "account_signup": public(
        get=signed_in(HOME, anonymous=200), post=signed_in(HOME, anonymous=200)
    ),
    "account_inactive": public(get=200, post=405),
    "account_reauthenticate": public(get=signed_in(200), post=signed_in(200)),
    "account_request_reauthentication_code": public(get=signed_in(200), post=signed_in(200)),
    "account_confirm_reauthentication_code": public(
        get=signed_in(to("account_request_reauthentication_code")),
        post=signed_in(to("account_request_reauthentication_code")),
    ),
    "account_email": public(get=signed_in(200), post=signed_in(to("account_email"))),
    "account_email_verification_sent": public(get=200, post=405),
    "account_confirm_email": public(get=200, post=404),
    "account_change_password": public(get=signed_in(200), post=signed_in(200)),
    "account_set_password": public(
        get=signed_in(to("account_change_password")), post=signed_in(to("account_change_password"))
    ),
    "account_reset_password": public(get=200, post=to("account_reset_password_done")),
    "account_reset_password_done": public(get=200, post=405),
    "account_reset_password_from_key": public(get=200, post=200),
    "account_reset_password_from_key_done": public(get=200, post=405),
    "account_confirm_login_code": public(
        get=signed_in(HOME, anonymous=to("account_login")),
        post=signed_in(HOME, anonymous=to("account_login")),
    ),
    # Django admin. ops(get=..., post=...) is the ops staff outcome; everyone else gets
    # ADMIN_LOGIN. ---------------------------------------------------------------------------
    # Django's own: a signed-in non-staff user sees the login form saying they are not
    # authorised; logout is POST only, and admin_view sends non-staff from it to the index.
    "admin:login": public(
        get=(*(200,) * 5, to("admin:index")),
        post=200,
    ),
    "admin:logout": public(
        get=(*(to("admin:index"),) * 5, 405), post=(*(to("admin:index"),) * 5, 200)
    ),
    "admin:index": ops(get=200, post=200),
    "admin:app_list": ops(get=200, post=200),
    "admin:password_change": ops(get=200, post=200),
    "admin:password_change_done": ops(get=200, post=405),
    "admin:autocomplete": ops(get=403, post=405),  # no term or field given
    "admin:jsi18n": ops(get=200, post=405),
    "admin:view_on_site": ops(get=404, post=404),  # no model of ours has get_absolute_url
    "admin/(?P<url>.*)$": ops(get=404, post=404),
    # Billing staff may not set passwords (no accounts.change_user).
    "admin:auth_user_password_change": ops(get=403, post=403),
    # Adjust balance (BalanceEntryAdmin): Billing staff may; the payload is not a valid form.
    "admin:billing_balanceentry_adjust": ops(get=200, post=400),
    # Custom views of SupportTicketAdmin: Billing staff answer tickets and open attachments.
    "admin:support_ticket_reply": ops(get=200, post=to("admin:support_supportticket_change")),
    "admin:support_attachment": ops(get=200, post=200),
    # Billing staff issue credit notes (the form refuses POST_DATA: nothing chosen) and
    # download their PDFs.
    "admin:billing_invoice_credit_note": ops(get=200, post=400),
    "admin:billing_creditnote_pdf": ops(get=200, post=405),
    # The finance export (portal.sites, billing.admin_finance): Billing staff may; without a
    # period GET shows its form; it only answers GET.
    "admin:finance_export": ops(get=200, post=405),
    # Staff groups have no permission on Django's groups nor allauth's email addresses
    # (support/staff.py, PROJECT_APPS); the rest of their family is as in ADMIN_FAMILY.
    "admin:auth_group_changelist": ops(get=403, post=403),
    "admin:auth_group_change": ops(get=403, post=403),
    "admin:auth_group_history": ops(get=403, post=403),
    "admin:account_emailaddress_changelist": ops(get=403, post=403),
    "admin:account_emailaddress_change": ops(get=403, post=403),
    "admin:account_emailaddress_history": ops(get=403, post=403),
}

# The generic views Django admin makes for every registered model, keyed by the URL name's
# suffix ("object" is the unnamed bare object URL, which redirects to the change page).
# Billing staff have the view permissions, no add, change or delete: they read everything
# (the change page shows read-only and refuses a POST) and change nothing generically.
ADMIN_FAMILY = {
    "changelist": ops(get=200, post=200),
    "add": ops(get=403, post=403),
    "change": ops(get=200, post=403),
    "delete": ops(get=403, post=403),
    "history": ops(get=200, post=200),
    "object": ops(get=TO_CHANGE, post=TO_CHANGE),
}

ADMIN_NAME = re.compile(r"^admin:(?P<app>[a-z]+)_(?P<model>[a-z]+)_(?P<kind>[a-z]+)$")
ADMIN_OBJECT_ROUTE = re.compile(r"^admin/(?P<app>\w+)/(?P<model>\w+)/<path:object_id>/$")


def url_patterns():
    """{key: (route, pattern)} for every URL pattern of the project; the key is the URL name
    with its namespace, or the route for an unnamed pattern."""

    def walk(patterns, prefix, namespaces):
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                inner = [*namespaces, entry.namespace] if entry.namespace else namespaces
                yield from walk(entry.url_patterns, route, inner)
            elif isinstance(entry, URLPattern):
                key = ":".join([*namespaces, entry.name]) if entry.name else route
                yield key, route, entry

    found = {}
    for key, route, pattern in walk(get_resolver().url_patterns, "", []):
        assert key not in found, f"two URL patterns are keyed {key!r}: {route}, {found[key][0]}"
        found[key] = (route, pattern)
    return found


def admin_family_kind(key, route):
    """(kind, app label, model name) of a generic ModelAdmin URL, or None."""
    match = ADMIN_OBJECT_ROUTE.match(route)
    if match and key == route:
        return "object", match["app"], match["model"]
    match = ADMIN_NAME.match(key)
    if match and match["kind"] in {"changelist", "add", "change", "delete", "history"}:
        return match["kind"], match["app"], match["model"]
    return None


def row_for(key, route):
    if key in TABLE:
        return TABLE[key]
    family = admin_family_kind(key, route)
    if family is not None:
        return ADMIN_FAMILY.get(family[0])
    return None


PARAM = re.compile(r"<(?:\w+:)?(?P<a>\w+)>|\(\?P<(?P<b>\w+)>[^)]*\)")


def fill(route, values):
    """The URL of `route` with its parameters taken from `values`."""

    def value(match):
        name = match["a"] or match["b"]
        assert name in values, f"{route}: give World.values a value for <{name}>"
        return quote(str(values[name]), safe="/")

    return "/" + PARAM.sub(value, route).replace("^", "").replace("$", "")


class World:
    """Organisations A (Enterprise, SSO configured but not enforced) and B, each with one
    object of every kind an organisation URL names, and the six roles' users."""

    def __init__(self, *, org, other_org, member, billing, admin, outsider):
        self.org = org
        self.other_org = other_org
        SubscriptionFactory(organisation=org, plan=plan("enterprise"))
        SubscriptionFactory(organisation=other_org)
        self.ours = organisation_objects(
            org, member=member, invoice_number="INV-2026-000101", domain="acme.test"
        )
        self.theirs = {
            **organisation_objects(
                other_org, member=outsider, invoice_number="INV-2026-000202", domain="globex.test"
            ),
            "org_slug": org.slug,
        }
        sso_configuration.idp_configure(
            organisation=org,
            actor=Actor(user=admin),
            idp_type="okta",
            metadata_url="",
            metadata_xml=TestIdP().metadata(),
            now=timezone.now(),
        )
        self.invitation_token = InvitationFactory(organisation=org).token
        token, digest = new_token()
        PrimaryEmailChange.objects.create(
            organisation=org,
            old_email=org.primary_email,
            new_email="accounts@acme.test",
            token_hash=digest,
            requested_by=admin,
            expires_at=timezone.now() + timedelta(days=3),
        )
        self.email_token = token
        self.recipient_token = billing_recipient_of(org, "payables@acme.test")[1]
        staff.staff_groups_ensure()
        ops_user = UserFactory(email="ops@portal.test", is_staff=True)
        ops_user.groups.add(Group.objects.get(name=staff.BILLING))
        self.users = {
            "anonymous": None,
            "member": member,
            "billing": billing,
            "admin": admin,
            "outsider": outsider,
            "ops": ops_user,
        }
        self.admin_rows()
        self.values = {
            **self.ours,
            "organisation_slug": org.slug,
            "key": "no-such-key",
            "uidb36": "1",
            "app_label": "billing",
            "url": "no-such-page/",
            "path": "v1/no-such-endpoint",  # usage:api_not_found
            # admin:view_on_site; the generic ModelAdmin URLs take their model's row instead.
            "content_type_id": ContentType.objects.get_for_model(Invoice).pk,
            "object_id": Invoice.objects.get(number="INV-2026-000101").pk,
            "ticket_pk": self.admin_object("support", "supportticket"),
            "invoice_pk": Invoice.objects.get(number="INV-2026-000101").pk,
            "credit_note_pk": CreditNote.objects.get(number="CN-2026-000101").pk,
            "id": admin.pk,  # admin:auth_user_password_change
            # allauth.mfa's security key pages: no one's key (tests/accounts/test_two_factor.py
            # tries another user's).
            "pk": 2**31 - 1,
            # accounts:session_end: another signed-in session of A's Admin.
            "session_id": signed_in_session(admin).public_id,
            # billing:usage_month: A's current usage month, by the local date it starts on.
            "month": usage_month_of(org.subscription, timezone.now())[0]
            .astimezone(org.tzinfo)
            .date()
            .isoformat(),
        }

    def admin_rows(self):
        """A row of every model Django admin shows that the objects above did not make."""
        now = timezone.now()
        subscription = self.org.subscription
        invoice = Invoice.objects.get(number="INV-2026-000101")
        ConnectionFactory(environment=self.org.environments.first())
        OutgoingEmail.objects.create(
            organisation=self.org,
            to_email="admin@acme.test",
            template="invitation",
            subject="Hello",
            body_text="Hello",
        )
        LedgerViolation.objects.create(
            rule="test", subject="INV-2026-000101", message="x", first_seen_at=now, last_seen_at=now
        )
        payment = Payment.objects.create(
            organisation=self.org,
            invoice=invoice,
            method_kind="card",
            attempt=1,
            amount=100,
            currency="USD",
            idempotency_key="matrix-1",
        )
        Dispute.objects.create(
            processor_id="dp_matrix",
            organisation=self.org,
            payment=payment,
            invoice=invoice,
            amount=100,
            currency="USD",
            status="needs_response",
            opened_at=now,
            event_created=now,
        )
        PaymentMethod.objects.create(
            organisation=self.org,
            stripe_payment_method_id="pm_matrix",
            brand="visa",
            last4="4242",
            exp_month=12,
            exp_year=2030,
            expires_at=now + timedelta(days=1000),
        )
        BillingProfile.objects.get_or_create(organisation=self.org)
        DunningCase.objects.create(organisation=self.org, subscription=subscription, started_at=now)
        OverageCharge.objects.create(
            organisation=self.org,
            subscription=subscription,
            invoice=invoice,
            month_start=now - timedelta(days=30),
            month_end=now,
            transactions=10,
            transaction_limit=5,
            units=1,
            unit_amount=250,
            amount=250,
            currency="USD",
            created_at=now,
        )
        ReconciliationDifference.objects.create(kind="missing_here", found_at=now, last_seen_at=now)
        BalanceEntry.objects.create(
            organisation=self.org,
            currency="USD",
            kind="adjustment",
            amount=500,
            remaining=500,
            description="Adjustment by our team",
            reason="Goodwill",
            created_at=now,
        )
        StripeEvent.objects.create(event_id="evt_matrix", type="charge.succeeded", payload={})
        UsageAlert.objects.create(
            organisation=self.org,
            month_start=now - timedelta(days=30),
            month_end=now,
            threshold=80,
            transactions=10,
        )
        SsoAttempt.objects.create(organisation=self.org, mode="test", outcome="failure")
        DataDeletionRequest.objects.create(organisation=self.org, scope="person")
        DeletionRecord.objects.create(kind="retention")

    def admin_object(self, app, model):
        row = apps.get_model(app, model)._default_manager.order_by("pk").first()
        assert row is not None, f"give World.admin_rows a {app}.{model} row for its admin pages"
        return row.pk

    def url(self, key, route, values=None):
        values = dict(values or self.values)
        if key == "accounts:invitation_accept":
            values["token"] = self.invitation_token
        elif key == "accounts:primary_email_verify":
            values["token"] = self.email_token
        elif key == "accounts:billing_recipient_confirm":
            values["token"] = self.recipient_token
        family = admin_family_kind(key, route)
        if family is not None and family[0] not in {"changelist", "add"}:
            values["object_id"] = self.admin_object(family[1], family[2])
        return fill(route, values)

    def expected_location(self, target, url):
        """Where to(target) points, for a request to `url`."""
        if target.startswith("./"):
            return url + target[2:]
        if target.startswith(("/", "http")):
            return target
        route = url_patterns()[target][0]
        return self.url(target, route)


POST_DATA = {
    "role": "member",
    "name": "Hacked",
    "email": "x@evil.test",
    "new_email": "x@evil.test",
    "subject": "Hacked",
    "message": "Hacked",
    "category": "billing",
    "policy": "everyone",
}


def describe(response, url):
    """The outcome of `response` in the table's terms."""
    if response.status_code not in (301, 302, 303, 307, 308):
        return response.status_code
    location = response["Location"]
    for outcome, login_url in (
        (LOGIN, reverse("account_login")),
        (ADMIN_LOGIN, reverse("admin:login")),
    ):
        if location == f"{login_url}?next={quote(url)}":
            return outcome
    parts = urlsplit(location)
    return To(f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else parts.path)


def resolved(expected, world, url):
    """`expected` with a to(URL name) turned into the URL it means."""
    if isinstance(expected, To):
        return To(world.expected_location(expected.target, url))
    return expected


class Visitor:
    """One role's client: each request in a savepoint, the session cookie kept."""

    def __init__(self, client, user, world):
        self.client = client
        self.world = world
        if user is not None:
            client.force_login(user)
        session = client.cookies.get(settings.SESSION_COOKIE_NAME)
        self.session_cookie = session.value if session is not None else None

    def request(self, method, url, *, expected):
        """(outcome, the tables a refused request wrote to)."""
        refused = expected in DENIED
        written = set()
        with transaction.atomic():
            before = rows_written() if refused else None
            try:
                if method == "get":
                    response = self.client.get(url)
                else:
                    response = self.client.post(url, POST_DATA)
                outcome = describe(response, url)
                if refused:
                    after = rows_written()
                    written = {t for t, n in after.items() if n != before.get(t, 0)} - MAY_WRITE
            except Exception as error:  # noqa: BLE001 - a view's exception is a finding
                outcome = f"500 {type(error).__name__}: {error}"
            transaction.set_rollback(True)
        # Forget every cookie the response set (a new session after sign-out, SSO state,
        # messages) so the next request starts as this role again.
        self.client.cookies.clear()
        if self.session_cookie is not None:
            self.client.cookies[settings.SESSION_COOKIE_NAME] = self.session_cookie
        return outcome, written


# tenant_view remembers the organisation last opened in the session, before the role check.
MAY_WRITE = {"accounts_usersession"}


def rows_written():
    """{table: rows inserted, updated or deleted so far in this transaction}; Postgres keeps
    counting across savepoints rolled back, so a difference is a write however it ended."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables"
        )
        return dict(cursor.fetchall())


@pytest.fixture
def quiet_request_logs(caplog):
    """Hundreds of 403s, 404s and 405s are the point here; logging each (403s with a
    formatted traceback) would take most of the run. Errors are still logged."""
    for name in ("django.request", "billing_portal.request"):
        caplog.set_level(logging.ERROR, logger=name)


@pytest.fixture
def world(org, other_org, member, billing_user, admin, outsider):
    return World(
        org=org,
        other_org=other_org,
        member=member,
        billing=billing_user,
        admin=admin,
        outsider=outsider,
    )


def test_every_url_has_a_row():
    patterns = url_patterns()
    missing = [key for key, (route, _) in patterns.items() if row_for(key, route) is None]
    assert not missing, "URLs missing from TABLE in tests/core/test_url_matrix.py:\n" + "\n".join(
        missing
    )
    gone = sorted(set(TABLE) - set(patterns))
    assert not gone, f"rows of TABLE for URLs that no longer exist: {gone}"
    families = {
        admin_family_kind(k, r)[0] for k, (r, _) in patterns.items() if admin_family_kind(k, r)
    }
    assert set(ADMIN_FAMILY) == families, "ADMIN_FAMILY rows without a URL: " + str(
        set(ADMIN_FAMILY) - families
    )


@pytest.mark.parametrize("role", ROLES)
def test_every_url_gives_the_tabled_outcome(client, world, role, quiet_request_logs):
    visitor = Visitor(client, world.users[role], world)
    problems = []
    checks = 0
    for key, (route, pattern) in sorted(url_patterns().items()):
        row = row_for(key, route)
        if row is None:
            continue  # test_every_url_has_a_row names it
        url = world.url(key, route)
        assert resolve(url).func == pattern.callback, f"{key}: {url} resolves elsewhere"
        for method in ("get", "post"):
            expected = getattr(row, method)[role]
            actual, written = visitor.request(method, url, expected=expected)
            checks += 1
            if actual != resolved(expected, world, url):
                problems.append(
                    f"{method.upper()} {url} [{key}]: expected {resolved(expected, world, url)}, "
                    f"got {actual}"
                )
            if written:
                problems.append(f"{method.upper()} {url} [{key}] was refused but wrote {written}")
            if role in OWN_ROLES and route.startswith("o/") and re.search(r"_(id|number)>", route):
                foreign = world.url(key, route, world.theirs)
                refused_early = expected if expected in (LOGIN, 403, 405) else 404
                actual, written = visitor.request(method, foreign, expected=refused_early)
                checks += 1
                if actual != refused_early:
                    problems.append(
                        f"{method.upper()} {foreign} [{key}, organisation B's ids]: "
                        f"expected {refused_early}, got {actual}"
                    )
                if written:
                    problems.append(
                        f"{method.upper()} {foreign} [{key}] was refused but wrote {written}"
                    )
    assert checks > 0
    assert not problems, f"{role}: {len(problems)} of {checks} checks failed:\n" + "\n".join(
        problems
    )
