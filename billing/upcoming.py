"""The upcoming invoice: the next invoices of a subscription, before they are issued
(docs/architecture.md#decision-the-upcoming-invoice-is-the-billing-run-as-a-dry-run).

They come from the billing run's own code, run as a dry run that writes nothing: the renewal
is `billing.invoicing.renewal_drafts` (the plan and price the renewal will apply, a scheduled
downgrade or switch to annual, the overage of the usage month so far, the amounts carried to
it, tax from the billing information as it stands), an annual plan's overage invoice is
`draft_overage_invoice`, and the customer balance is `balance_apply_preview`, the rule that
`balance_apply` follows. Nothing is numbered, locked or saved, so the preview cannot drift from
what the billing run issues: with no change in between, they are the same to the cent.
"""

import copy
from dataclasses import dataclass, field
from datetime import datetime

from accounts.models import Organisation
from billing.balance import balance_apply_preview
from billing.drafts import InvoiceDraft, Overage, draft_overage_invoice, overage_for
from billing.invoicing import carried_owed, renewal_drafts
from billing.models import BalanceEntry, BillingProfile, Invoice, InvoiceLine, OverageCharge
from billing.tax import tax_rates
from subscriptions.lifecycle import scheduled_changes_prefetch
from subscriptions.models import BillingCycle, Subscription
from subscriptions.states import RENEWING
from usage.billing import months_usage
from usage.months import usage_month
from usage.projection import Projection, usage_projection
from usage.selectors import UsageSummary


@dataclass
class UpcomingInvoice:
    """One invoice still to come: the unsaved invoice and lines the billing run would store."""

    issue_at: datetime
    invoice: Invoice
    lines: list[InvoiceLine]
    # "Credit applied (CN-…)" entries the customer balance would add, unsaved.
    credits: list[BalanceEntry] = field(default_factory=list)
    # Whether it bills the usage month that is still open (its overage is "so far").
    open_month: bool = False

    @property
    def final(self) -> bool:
        return self.invoice.kind == Invoice.Kind.OVERAGE


@dataclass
class Upcoming:
    invoices: list[UpcomingInvoice]  # in the order they will be issued
    # Why no renewal comes: "cancelled", "suspended", "incomplete", "ended" or "" when one does.
    no_renewal: str
    projection: Projection | None = None
    # The overage the open usage month would cost at its projection, before tax (None when the
    # projection stays within the limit or the plan has no overage rate).
    projected_overage: Overage | None = None

    @property
    def next(self) -> UpcomingInvoice | None:
        return self.invoices[0] if self.invoices else None


def _subscription(organisation: Organisation) -> Subscription | None:
    """The subscription loaded as the billing run loads it, fresh: the dry run moves it to its
    next period in memory, and nothing else on the page may see that."""
    return (
        Subscription.objects.select_related("organisation", "organisation__billing_profile", "plan")
        .prefetch_related("plan__prices", scheduled_changes_prefetch())
        .filter(organisation=organisation)
        .first()
    )


def _detached(subscription: Subscription, organisation: Organisation) -> Subscription:
    """A copy of a subscription the page already read (plan, prices and `scheduled_changes`
    loaded, as subscriptions.selectors.subscription_for_settings does), with the organisation's
    billing information, for the dry run to move in memory: the page keeps showing the
    original. One query (the billing information) instead of the fresh load's three."""
    # The dry run sets the subscription's period, cycle, price and plan and marks a scheduled
    # change applied: those get copies. The plans, prices and organisation it only reads are
    # shared (a deep copy would also drop the prefetched prices and read them again).
    detached = copy.copy(subscription)
    detached.scheduled_changes = [copy.copy(change) for change in subscription.scheduled_changes]
    detached.organisation = organisation
    profile = BillingProfile.objects.filter(organisation=organisation).first()
    Organisation.billing_profile.related.set_cached_value(organisation, profile)
    return detached


def upcoming_invoices(
    *,
    organisation: Organisation,
    now: datetime,
    subscription: Subscription | None = None,
    usage: UsageSummary | None = None,
) -> Upcoming:
    """The invoices the organisation's subscription will be issued next, as of `now`; a fixed
    number of queries, whatever the history. What the page already read is not read again:
    `subscription`, the organisation's subscription with its plan, prices and
    `scheduled_changes` (left as it is: the dry run works on a copy); `usage`, the Usage
    section's figures as of the same `now` (this usage month's transactions and the
    projection's window, from the same counters)."""
    if subscription is None:
        subscription = _subscription(organisation)
    else:
        subscription = _detached(subscription, organisation)
    if subscription is None:
        return Upcoming(invoices=[], no_renewal="none")
    status = subscription.status
    if status in (Subscription.Status.INCOMPLETE, Subscription.Status.ENDED):
        return Upcoming(invoices=[], no_renewal=status)
    zone = organisation.tzinfo
    month_start, month_end = usage_month(anchor=subscription.anchor_at, zone=zone, at=now)
    known = usage is not None and usage.as_of == now and usage.month_start == month_start
    if known:
        used = usage.used
    else:
        used = months_usage([(organisation.pk, month_start)]).get((organisation.pk, month_start), 0)
    projection = usage_projection(
        organisation_id=organisation.pk,
        anchor_at=subscription.anchor_at,
        zone=zone,
        used=used,
        month_end=month_end,
        now=now,
        window_total=usage.projection_window_total if known else None,
    )
    plan = subscription.plan
    projected_overage = None
    if projection is not None:
        projected_overage = overage_for(
            subscription=subscription,
            plan=plan,
            month_start=month_start,
            month_end=month_end,
            used=projection.projected,
        )
    invoices = _overage_invoices(
        subscription, now=now, open_month=month_start, open_used=used if known else None
    )
    if status in RENEWING and not subscription.cancel_at_period_end:
        invoices.append(_renewal(subscription, month_start=month_start, used=used))
        no_renewal = ""
    else:
        no_renewal = "cancelled" if subscription.cancel_at_period_end else status
    invoices.sort(key=lambda upcoming: upcoming.issue_at)
    credits = balance_apply_preview([upcoming.invoice for upcoming in invoices])
    for upcoming in invoices:
        upcoming.credits = [c for c in credits if c.invoice is upcoming.invoice]
    return Upcoming(
        invoices=invoices,
        no_renewal=no_renewal,
        projection=projection,
        projected_overage=projected_overage,
    )


def _renewal(subscription: Subscription, *, month_start: datetime, used: int) -> UpcomingInvoice:
    """The renewal invoice at the period's end, exactly as billing_run_issue drafts it; `used`:
    the transactions of the open usage month starting at `month_start`, already read."""
    issue_at = subscription.current_period_end
    # Monthly: the renewal bills the usage month that closes then, still open now.
    open_month = (
        subscription.billing_cycle == BillingCycle.MONTHLY
        and subscription.current_period_start == month_start
    )
    [draft], _ = renewal_drafts(
        [subscription],
        carried=carried_owed([subscription], lock=False),
        now=issue_at,
        known_usage={(subscription.organisation_id, month_start): used},
    )
    return _upcoming(draft, issue_at=issue_at, open_month=open_month)


def _overage_invoices(
    subscription: Subscription, *, now: datetime, open_month: datetime, open_used: int | None
) -> list[UpcomingInvoice]:
    """The overage-only invoices to come (billing.invoicing.overage_invoices_issue): each usage
    month of an annual term over the limit and not billed yet, at its close (a cancellation
    holds them to the term's end); a cancelled monthly plan's final month, at the period's
    end. The open month's figure is its usage so far (`open_used` when already read)."""
    zone = subscription.organisation.tzinfo
    cancelled = subscription.cancel_at_period_end
    annual = subscription.billing_cycle == BillingCycle.ANNUAL
    if not annual and not cancelled:
        return []  # a monthly plan's overage rides on its renewal
    months = []
    moment = subscription.current_period_start if annual else open_month
    while moment <= open_month:
        start, end = usage_month(anchor=subscription.anchor_at, zone=zone, at=moment)
        months.append((start, end))
        moment = end
    organisation_id = subscription.organisation_id
    keys = [(organisation_id, start) for start, _ in months]
    known = {} if open_used is None else {(organisation_id, open_month): open_used}
    usage = {key: known[key] for key in keys if key in known}
    usage.update(months_usage([key for key in keys if key not in known]))
    billed = set(
        OverageCharge.objects.filter(
            subscription=subscription, month_start__in=[start for start, _ in months]
        ).values_list("month_start", flat=True)
    )
    rates = tax_rates()
    profile = getattr(subscription.organisation, "billing_profile", None)
    upcoming = []
    for start, end in months:
        overage = overage_for(
            subscription=subscription,
            plan=subscription.plan,
            month_start=start,
            month_end=end,
            used=usage.get((organisation_id, start), 0),
        )
        if overage is None or start in billed:
            continue
        # A closed month is billed by the next run; a cancellation holds them to the end.
        issue_at = subscription.current_period_end if cancelled else max(end, now)
        draft = draft_overage_invoice(
            subscription=subscription, overage=overage, profile=profile, rates=rates, now=issue_at
        )
        upcoming.append(_upcoming(draft, issue_at=issue_at, open_month=start == open_month))
    return upcoming


def _upcoming(draft: InvoiceDraft, *, issue_at: datetime, open_month: bool) -> UpcomingInvoice:
    return UpcomingInvoice(
        issue_at=issue_at, invoice=draft.invoice, lines=draft.lines, open_month=open_month
    )
