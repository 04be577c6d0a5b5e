"""The Overview: the organisation's landing page, answering at a glance for each role.

It joins subscriptions (plan, status, renewal, a scheduled downgrade, a cancellation), usage
(this month's transactions and the projection to the month's end), billing (the failed-payment
state, a payment to confirm, the card, the last invoices), sso (certificates) and retention
(the data-deletion countdown), so it lives in the composition layer
(docs/architecture.md#portal).

Members see what they may see: no money at all
(docs/architecture.md#decision-three-roles-per-organisation).
The page costs the same number of queries however many invoices, flows, members or usage days
the organisation has: each part is one read, never a loop over rows.
"""

from dataclasses import dataclass, field
from datetime import datetime

from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format

from accounts.models import Membership
from accounts.roles import ADMIN, ADMIN_AND_BILLING
from billing.cards import CARD_EXPIRY_REMINDER
from billing.models import Invoice, Payment
from billing.selectors import invoice_list, payment_method_current
from core.money import format_money
from retention.templatetags.deletion_countdown import countdown
from sso.certificates import certificate_warnings
from sso.models import SsoConfiguration
from subscriptions.cancellation import data_deletion_at
from subscriptions.models import PaymentMethodKind, Subscription
from subscriptions.selectors import plan_change_scheduled, subscription_for, usage_counts
from usage.selectors import UsageSummary, usage_summary

# Invoice History's newest rows shown on the Overview.
RECENT_INVOICES = 3

Status = Subscription.Status


@dataclass(frozen=True)
class ActionItem:
    """Something that needs doing, and where it is done."""

    key: str  # what it is about, e.g. "payment_failed" (the page marks it data-action)
    tone: str  # the badge's colour: "err", "warn" or "info"
    label: str  # the badge: "Payment failed", "Card expiring", ...
    text: str
    link_text: str = ""
    url: str = ""


@dataclass(frozen=True)
class Shortcut:
    label: str
    url: str


@dataclass
class Overview:
    subscription: Subscription | None
    shows_money: bool
    usage: UsageSummary | None = None
    counts: dict = field(default_factory=dict)
    actions: list[ActionItem] = field(default_factory=list)
    invoices: list[Invoice] = field(default_factory=list)
    shortcuts: list[Shortcut] = field(default_factory=list)


def _day(moment: datetime) -> str:
    """ "12 March 2026", in the active time zone (the organisation's, set by tenant_view)."""
    return date_format(timezone.localtime(moment), "j F Y")


def _url(name: str, slug: str, *args) -> str:
    return reverse(name, args=[slug, *args])


def overview_for(*, membership: Membership, account_state, now: datetime) -> Overview:
    """What the Overview shows to `membership` (loaded by tenant_view, with its organisation).

    `account_state` is the failed-payment banner's state (billing.context_processors), passed
    in so the page and the banner read the open dunning case once.
    """
    organisation = membership.organisation
    role = membership.role
    shows_money = role in ADMIN_AND_BILLING
    subscription = subscription_for(organisation=organisation)
    if subscription is not None:
        # usage_summary reads the organisation's time zone from it: no second query.
        subscription.organisation = organisation
    overview = Overview(subscription=subscription, shows_money=shows_money)
    if subscription is not None and subscription.status != Status.INCOMPLETE:
        overview.usage = usage_summary(subscription=subscription, now=now)
        overview.counts = usage_counts(organisation=organisation)
    overview.actions = _actions(
        membership, subscription, account_state=account_state, shows_money=shows_money, now=now
    )
    if shows_money:
        overview.invoices = list(invoice_list(organisation=organisation)[:RECENT_INVOICES])
    overview.shortcuts = _shortcuts(role, organisation.slug, subscription)
    return overview


# What needs attention --------------------------------------------------------------------


def _actions(membership, subscription, *, account_state, shows_money, now) -> list[ActionItem]:
    slug = membership.organisation.slug
    role = membership.role
    items = []
    payment = _payment_failing(account_state, slug=slug)
    if payment is not None:
        items.append(payment)
    if shows_money:
        confirm = _payment_to_confirm(membership.organisation, account_state, slug=slug)
        if confirm is not None:
            items.append(confirm)
        if subscription is not None and subscription.status != Status.ENDED:
            card = _card_expiring(subscription, slug=slug, now=now)
            if card is not None:
                items.append(card)
    if subscription is not None:
        ending = _subscription_ending(subscription, role=role, slug=slug)
        if ending is not None:
            items.append(ending)
        if shows_money and subscription.status != Status.ENDED:
            downgrade = _downgrade_scheduled(subscription, slug=slug)
            if downgrade is not None:
                items.append(downgrade)
    if role == ADMIN:
        items.extend(_sso_certificates(membership.organisation, slug=slug, now=now))
    return items


def _payment_failing(state, *, slug: str) -> ActionItem | None:
    """The open dunning case, as the banner says it; the amount only to those who may pay."""
    if not state:
        return None
    amount = f" of {format_money(state.amount_due, state.currency)}" if state.can_pay else ""
    suspension = _day(state.suspension_at)
    if state.status == Status.SUSPENDED:
        label, tone = "Account suspended", "err"
        text = f"ProcessFlows are paused until the payment{amount} is made."
    elif state.confirm_invoice:
        label, tone = "Payment to confirm", "warn"
        text = (
            f"Your bank needs you to confirm a payment{amount}. "
            f"The account is suspended on {suspension} unless it is paid."
        )
    elif state.status == Status.GRACE:
        label, tone = "Payment failed", "err"
        text = (
            f"The final attempt failed: a payment{amount} is still due. "
            f"The account is suspended on {suspension} unless it is paid."
        )
    elif state.retry_at:
        label, tone = "Payment failed", "warn"
        text = f"A payment{amount} failed. We retry on {_day(state.retry_at)}."
    else:
        label, tone = "Payment overdue", "warn"
        text = (
            f"A payment{amount} is overdue. "
            f"The account is suspended on {suspension} unless it is paid."
        )
    if not state.can_pay:
        who = "an Admin or Billing contact" if state.confirm_invoice else "an Admin"
        return ActionItem("payment_failed", tone, label, f"{text} Ask {who} to pay it.")
    if state.confirm_invoice:
        link = ("Confirm payment", _url("billing:confirm_payment", slug, state.confirm_invoice))
    elif state.by_card:
        link = ("Update card or retry payment", _url("billing:payment_method", slug))
    else:
        link = ("See the open invoices", _url("billing:invoices", slug))
    return ActionItem("payment_failed", tone, label, text, *link)


def _payment_to_confirm(organisation, state, *, slug: str) -> ActionItem | None:
    """An open invoice whose charge waits for the customer's bank (3-D Secure) outside the
    failed-payment schedule (the first invoice, an upgrade): the dunning item already says it
    for one inside (docs/architecture.md#decision-3-d-secure)."""
    if state and state.confirm_invoice:
        return None
    invoice = (
        Invoice.objects.filter(
            organisation=organisation,
            status=Invoice.Status.OPEN,
            payments__status=Payment.Status.REQUIRES_ACTION,
        )
        .order_by("issued_at", "pk")
        .only("number", "total", "currency", "kind")
        .first()
    )
    if invoice is None:
        return None
    return ActionItem(
        "payment_to_confirm",
        "warn",
        "Payment to confirm",
        f"Your bank needs you to confirm the payment of {invoice.number} "
        f"({format_money(invoice.total, invoice.currency)}). Nothing has been charged yet.",
        "Confirm payment",
        _url("billing:confirm_payment", slug, invoice.number),
    )


def _card_expiring(subscription, *, slug: str, now: datetime) -> ActionItem | None:
    """The card on file, from the day its expiry reminder is emailed (billing.cards)."""
    if subscription.payment_method_kind != PaymentMethodKind.CARD:
        return None
    card = payment_method_current(organisation=subscription.organisation)
    if card is None or card.expires_at > now + CARD_EXPIRY_REMINDER:
        return None
    which = f"{card.get_brand_display()} ending {card.last4}"
    expires = f"{card.exp_month:02d}/{card.exp_year}"
    if card.expires_at <= now:
        return ActionItem(
            "card_expiring",
            "err",
            "Card expired",
            f"Your {which} expired ({expires}). Add a new card so the next invoice can be paid.",
            "Update card",
            _url("billing:payment_method", slug),
        )
    return ActionItem(
        "card_expiring",
        "warn",
        "Card expiring",
        f"Your {which} expires at the end of {expires}. Update it before the next invoice.",
        "Update card",
        _url("billing:payment_method", slug),
    )


def _subscription_ending(subscription, *, role: str, slug: str) -> ActionItem | None:
    """A cancellation waiting for the period end, or an ended subscription, with the day the
    organisation's data is deleted
    (docs/architecture.md#decision-the-deletion-countdown-offers-the-exports)."""
    if subscription.status == Status.ENDED and subscription.ended_at is not None:
        deleted = data_deletion_at(subscription)
        text = (
            f"Your subscription ended on {_day(subscription.ended_at)}. Your data is deleted on "
            f"{_day(deleted)} ({countdown(deleted)}); until then you can view and export it."
        )
        if role == ADMIN:
            link = ("Choose a plan", _url("billing:choose_plan", slug))
        else:
            link = ("Export Sync Info", _url("usage:sync_info_export", slug))
        return ActionItem("subscription_ended", "err", "Subscription ended", text, *link)
    if not subscription.cancel_at_period_end:
        return None
    deleted = data_deletion_at(subscription)
    text = (
        f"Your subscription ends on {_day(subscription.current_period_end)}: no further "
        f"charges, and all ProcessFlows stop that day. Your data is deleted on {_day(deleted)} "
        f"({countdown(deleted)})."
    )
    if role == ADMIN:
        link = ("Undo cancellation", _url("subscriptions:settings", slug))
    elif role in ADMIN_AND_BILLING:
        link = ("See the subscription", _url("subscriptions:settings", slug))
    else:
        link = ("Export Sync Info", _url("usage:sync_info_export", slug))
    return ActionItem("cancellation", "warn", "Cancellation pending", text, *link)


def _downgrade_scheduled(subscription, *, slug: str) -> ActionItem | None:
    change = plan_change_scheduled(subscription=subscription)
    if change is None:
        return None
    return ActionItem(
        "downgrade",
        "info",
        "Plan change scheduled",
        f"Your plan changes from {change.from_plan.name} to {change.to_plan.name} on "
        f"{_day(change.effective_at)}. ProcessFlows above its limits pause that day.",
        "Review the change",
        _url("subscriptions:settings", slug),
    )


def _sso_certificates(organisation, *, slug: str, now: datetime) -> list[ActionItem]:
    """The IdP signing certificates expired or expiring within the warning window
    (sso.certificates), as the SSO page warns."""
    config = (
        SsoConfiguration.objects.filter(organisation=organisation)
        .only("pk", "idp_certificates")
        .first()
    )
    if config is None:
        return []
    return [
        ActionItem(
            "sso_certificate",
            "err" if "has expired" in warning else "warn",
            "SSO certificate",
            warning,
            "Open SSO settings",
            _url("sso:settings", slug),
        )
        for warning in certificate_warnings(config, now=now)
    ]


# Shortcuts -------------------------------------------------------------------------------


def _shortcuts(role: str, slug: str, subscription) -> list[Shortcut]:
    """What this role may do from here (accounts.roles: who may open which page)."""
    if role == ADMIN:
        if subscription is None or subscription.status in (Status.INCOMPLETE, Status.ENDED):
            plan = [Shortcut("Choose a plan", _url("billing:choose_plan", slug))]
        elif subscription.cancel_at_period_end:
            plan = [Shortcut("Subscription", _url("subscriptions:settings", slug))]
        else:
            plan = [
                Shortcut("Upgrade Plan", _url("billing:upgrade", slug)),
                Shortcut("Change Plan", _url("subscriptions:change_plan", slug)),
            ]
        return [
            *plan,
            Shortcut("Update card", _url("billing:payment_method", slug)),
            Shortcut("Invite users", _url("accounts:user_invite", slug)),
            Shortcut("SSO", _url("sso:settings", slug)),
        ]
    if role in ADMIN_AND_BILLING:
        return [
            Shortcut("Update card", _url("billing:payment_method", slug)),
            Shortcut("Billing information", _url("billing:billing_information", slug)),
            Shortcut("Invoice History", _url("billing:invoices", slug)),
        ]
    return [
        Shortcut("ProcessFlows", _url("subscriptions:flows", slug)),
        Shortcut("Sync Info", _url("usage:sync_info", slug)),
    ]
