"""Issuing invoices: the billing run (period invoices), annual plans' overage invoices, and
the first invoice of a subscription chosen at checkout.

Plans, periods, invoices and numbering are ours; Stripe only charges cards (billing.payments).
Each issue happens in one transaction with what it bills for (the period moving on, the usage
month billed); the PDFs and "invoice issued" emails follow in the background once committed.
"""

import gc
import logging
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q

from accounts.audit import Actor, audit_record
from accounts.models import Organisation
from accounts.services import organisation_lock
from billing.arrears import arrears
from billing.balance import balance_return
from billing.drafts import (
    InvoiceDraft,
    Overage,
    draft_overage_invoice,
    draft_period_invoice,
    drafts_save,
    overage_for,
)
from billing.models import BillingProfile, CarriedCharge, Invoice, OverageCharge
from billing.payments import invoice_settle
from billing.queueing import queue_invoice_documents
from billing.tax import tax_rates
from core.errors import ServiceError
from core.money import format_money
from subscriptions.lifecycle import (
    Period,
    scheduled_changes_prefetch,
    subscription_create,
    subscription_next_period,
    subscriptions_save_periods,
)
from subscriptions.models import BillingCycle, Plan, PlanChange, Subscription
from subscriptions.plan_changes import downgrade_apply_flows
from subscriptions.states import RENEWING
from usage.billing import MonthOverLimit, months_usage
from usage.models import UsageCounter
from usage.months import usage_month_of

logger = logging.getLogger(__name__)


def billing_run_issue(*, now: datetime, batch_size: int = 500, limit: int | None = None) -> int:
    """Issue every period invoice due by `now` (docs/architecture.md#billing).

    Subscriptions whose period has ended are claimed in batches with SKIP LOCKED, so runs can
    overlap; each claimed subscription moves to its next period and gets that period's invoice
    in the same transaction. A subscription several periods behind gets one invoice per period,
    oldest first. The unique (subscription, period_start) constraint backs all of this up.

    A monthly plan's renewal invoice also carries the overage of the usage month that just
    closed (the period before), at the plan of that month; its usage comes from one aggregate
    query per batch, and an OverageCharge row records the month as billed.
    """
    issued = 0
    while limit is None or issued < limit:
        size = batch_size if limit is None else min(batch_size, limit - issued)
        with transaction.atomic():
            subscriptions = list(
                Subscription.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("organisation", "organisation__billing_profile", "plan")
                .prefetch_related("plan__prices", scheduled_changes_prefetch())
                # A cancelled subscription is never invoiced again; it ends at period end.
                .filter(
                    status__in=RENEWING, current_period_end__lte=now, cancel_at_period_end=False
                )
                .order_by("current_period_end", "pk")[:size]
            )
            if not subscriptions:
                break
            invoices = _renew(subscriptions, now=now)
        issued += len(invoices)
        # Model instances hold reference cycles (related-object caches); free each batch's
        # now, so a run over 100,000 subscriptions uses the memory of one batch.
        del subscriptions, invoices
        gc.collect()
    return issued


def _renew(subscriptions: list[Subscription], *, now: datetime) -> list[Invoice]:
    """Move each locked subscription to its next period and issue that period's invoice, with
    the overage of the usage month that closed (caller's transaction)."""
    drafts, downgraded = renewal_drafts(
        subscriptions, carried=carried_owed(subscriptions, lock=True), now=now
    )
    subscriptions_save_periods(subscriptions, [change for _, change in downgraded])
    invoices = drafts_save(drafts, now=now, settle=invoice_settle)
    for subscription, change in downgraded:
        downgrade_apply_flows(subscription=subscription, change=change, now=now)
    queue_invoice_documents(invoices)
    return invoices


def renewal_drafts(
    subscriptions: list[Subscription],
    *,
    carried: dict[int, list[CarriedCharge]],
    now: datetime,
    known_usage: dict[tuple[int, datetime], int] | None = None,
) -> tuple[list[InvoiceDraft], list[tuple[Subscription, PlanChange]]]:
    """Each subscription's renewal invoice as a draft, the subscription moved (in memory) to its
    next period, and the scheduled downgrades that renewal applies. Writes nothing: the billing
    run saves what it returns, the upcoming invoice (billing.upcoming) only shows it, so the
    preview is the invoice the run will issue. `known_usage`: transactions of (organisation id,
    usage month start) the caller already read (the upcoming invoice), not read again."""
    rates = tax_rates()
    overages = _closed_months_overage(subscriptions, known_usage or {})
    drafts = []
    downgraded = []
    for subscription in subscriptions:
        # Before the period advances: the closed month's plan, before any downgrade.
        overage = overages.get(subscription.pk)
        period = subscription_next_period(subscription=subscription)
        if period.applied_change is not None:
            downgraded.append((subscription, period.applied_change))
        profile = getattr(subscription.organisation, "billing_profile", None)
        drafts.append(
            draft_period_invoice(
                subscription=subscription,
                period=period,
                profile=profile,
                rates=rates,
                now=now,
                overage=overage,
                # A subscription several periods behind bills them on the first one.
                carried=carried.pop(subscription.pk, []),
            )
        )
    return drafts, downgraded


def carried_owed(
    subscriptions: list[Subscription], *, lock: bool
) -> dict[int, list[CarriedCharge]]:
    """The amounts carried to each subscription's next invoice and not billed yet (locked, for
    the billing run, in the caller's transaction): one query for the batch."""
    owed = defaultdict(list)
    charges = CarriedCharge.objects.filter(
        subscription_id__in=[s.pk for s in subscriptions], line__isnull=True, waived_at__isnull=True
    ).order_by("pk")
    for charge in charges.select_for_update() if lock else charges:
        owed[charge.subscription_id].append(charge)
    return owed


def _closed_months_overage(
    subscriptions: list[Subscription], known_usage: dict[tuple[int, datetime], int]
) -> dict[int, Overage]:
    """The overage of each monthly subscription's closing period (its usage month), by
    subscription id, skipping months already billed. One aggregate query for the batch, plus
    one for the billed months only when some month went over its limit."""
    monthly = [s for s in subscriptions if s.billing_cycle == BillingCycle.MONTHLY]
    keys = [(s.organisation_id, s.current_period_start) for s in monthly]
    usage = {key: known_usage[key] for key in keys if key in known_usage}
    usage.update(months_usage([key for key in keys if key not in known_usage]))
    overages = {}
    for subscription in monthly:
        used = usage.get((subscription.organisation_id, subscription.current_period_start), 0)
        overage = overage_for(
            subscription=subscription,
            plan=subscription.plan,
            month_start=subscription.current_period_start,
            month_end=subscription.current_period_end,
            used=used,
        )
        if overage is not None:
            overages[subscription.pk] = overage
    if overages:
        billed = set(
            OverageCharge.objects.filter(
                subscription_id__in=list(overages),
                month_start__in={o.month_start for o in overages.values()},
            ).values_list("subscription_id", "month_start")
        )
        overages = {pk: o for pk, o in overages.items() if (pk, o.month_start) not in billed}
    return overages


# Overage is owed for the transactions made, so a suspended subscription is billed too.
OVERAGE_STATUSES = RENEWING | {Subscription.Status.SUSPENDED}
# A usage month lasts at least 28 days (less an hour over a daylight-saving change): a month
# started later than this cannot have closed, so the candidate query leaves it out.
SHORTEST_MONTH = timedelta(days=27)
# ... and at most 31 days and an hour: a month started longer than this before a plan change
# closed before it.
LONGEST_MONTH = timedelta(days=32)


def overage_months_due(*, now: datetime) -> list[MonthOverLimit]:
    """Usage months over the limit that no overage charge bills yet, oldest first, whatever
    their age (docs/architecture.md#billing): a job that did not run for months, or a
    cancellation undone late, still bills them. One aggregate query over the counters of the
    subscriptions concerned since their anchor; the months already billed are taken out after
    grouping, against the unique (subscription, month) index of the overage charges.

    Annual plans that renew (or are suspended) are billed month by month; a cancelled
    subscription's months are held until it renews again (undo) or ends. An ended one owes
    its unbilled months: every month of an annual term, and a monthly plan's final month
    (its current period: the earlier ones went on the renewal invoices). Months before the
    anchor belong to an earlier cycle or term; months that closed before the latest plan
    change were settled at the earlier plan's limit. The caller checks which months have
    closed.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.* FROM ("  # noqa: S608
            "SELECT s.id, s.organisation_id, c.month_start, SUM(c.transactions) AS n "
            f"FROM {UsageCounter._meta.db_table} c "
            f"JOIN {Subscription._meta.db_table} s ON s.organisation_id = c.organisation_id "
            f"JOIN {Plan._meta.db_table} p ON p.id = s.plan_id "
            # Not the months that closed under an earlier plan (before a downgrade at the
            # renewal): their overage was settled at that plan's limit when they closed.
            "LEFT JOIN (SELECT subscription_id, max(closed_at) AS changed_at "
            f"  FROM {PlanChange._meta.db_table} WHERE status = %(applied)s "
            "  GROUP BY subscription_id) pc ON pc.subscription_id = s.id "
            "WHERE c.month_start >= GREATEST(s.anchor_at, pc.changed_at - %(longest)s) "
            "AND c.month_start < %(before)s "
            "AND ((s.billing_cycle = %(annual)s AND s.status = ANY(%(statuses)s) "
            "      AND NOT s.cancel_at_period_end) "
            "  OR (s.status = %(ended)s "
            "      AND (s.billing_cycle = %(annual)s OR c.month_start >= s.current_period_start))) "
            "GROUP BY s.id, s.organisation_id, c.month_start, p.monthly_transactions "
            "HAVING SUM(c.transactions) > p.monthly_transactions) m "
            f"WHERE NOT EXISTS (SELECT 1 FROM {OverageCharge._meta.db_table} o "
            "  WHERE o.subscription_id = m.id AND o.month_start = m.month_start) "
            "ORDER BY m.month_start, m.id",
            {
                "before": now - SHORTEST_MONTH,
                "annual": BillingCycle.ANNUAL,
                "ended": Subscription.Status.ENDED,
                "statuses": sorted(OVERAGE_STATUSES),
                "longest": LONGEST_MONTH,
                "applied": PlanChange.Status.APPLIED,
            },
        )
        return [
            MonthOverLimit(
                subscription_id=sid, organisation_id=org, month_start=month, transactions=int(n)
            )
            for sid, org, month, n in cursor.fetchall()
        ]


def _overage_billable() -> Q:
    """The subscriptions overage_months_due bills (for the lock, re-checked under it)."""
    return Q(billing_cycle=BillingCycle.ANNUAL, status__in=OVERAGE_STATUSES) & Q(
        cancel_at_period_end=False
    ) | Q(status=Subscription.Status.ENDED)


def overage_invoices_issue(*, now: datetime, batch_size: int = 200) -> int:
    """Issue an overage-only invoice for each closed usage month over the plan's monthly limit
    that is owed and not billed (docs/architecture.md#billing), once per month: each month of
    an annual plan at its close, and at the end of a cancelled subscription its final month
    (monthly plans) or every month the cancellation held (annual plans).

    Candidates come from one aggregate query (overage_months_due); each batch then locks its
    subscriptions (SKIP LOCKED, so runs can overlap), re-checks what is billed under the lock,
    and issues the invoices and their OverageCharge rows (unique per subscription and month) in
    one transaction. The limit and rate are those of the subscription's current plan. Card
    invoices are charged by the charge job; bank transfer and PO ones are due in N days.
    """
    due = overage_months_due(now=now)
    issued = 0
    for offset in range(0, len(due), batch_size):
        chunk = due[offset : offset + batch_size]
        with transaction.atomic():
            invoices = _issue_overage_chunk(chunk, now=now)
        issued += len(invoices)
    carried_charges_waive_ended(now=now)
    return issued


def carried_charges_waive_ended(*, now: datetime) -> int:
    """Amounts carried to a renewal that never comes (the subscription ended) are waived:
    cancelling stops every further invoice, and each is below the minimum card charge.
    (docs/architecture.md#decision-amounts-below-the-minimum-charge-are-carried)"""
    waived = CarriedCharge.objects.filter(
        line__isnull=True,
        waived_at__isnull=True,
        subscription__status=Subscription.Status.ENDED,
    ).update(waived_at=now)
    if waived:
        logger.info("Waived %s carried amount(s) of ended subscriptions", waived)
    return waived


def _issue_overage_chunk(chunk: list, *, now: datetime) -> list[Invoice]:
    """Lock the chunk's subscriptions, re-check what is billed under the lock, and issue the
    overage invoices still owed (caller's transaction)."""
    locked = {
        s.pk: s
        for s in Subscription.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("organisation", "organisation__billing_profile", "plan")
        .prefetch_related("plan__prices")
        .filter(_overage_billable(), pk__in={c.subscription_id for c in chunk})
    }
    billed = set(
        OverageCharge.objects.filter(
            subscription_id__in=list(locked),
            month_start__in={c.month_start for c in chunk},
        ).values_list("subscription_id", "month_start")
    )
    rates = tax_rates()
    drafts = []
    for candidate in chunk:
        subscription = locked.get(candidate.subscription_id)
        if subscription is None or (subscription.pk, candidate.month_start) in billed:
            continue
        start, end = usage_month_of(subscription, candidate.month_start)
        if start != candidate.month_start or end > now:
            continue  # still open (or not a month of this term)
        overage = overage_for(
            subscription=subscription,
            plan=subscription.plan,
            month_start=start,
            month_end=end,
            used=candidate.transactions,
        )
        if overage is None:
            continue
        drafts.append(
            draft_overage_invoice(
                subscription=subscription,
                overage=overage,
                profile=getattr(subscription.organisation, "billing_profile", None),
                rates=rates,
                now=now,
            )
        )
    invoices = drafts_save(drafts, now=now, settle=invoice_settle)
    queue_invoice_documents(invoices)
    return invoices


def subscription_start(
    *,
    organisation: Organisation,
    actor: Actor,
    plan: Plan,
    billing_cycle: str,
    currency: str,
    now: datetime,
) -> Invoice:
    """Choosing a plan: the subscription waits for its first invoice, issued here and charged next.

    Choosing again after a failed first payment reuses the open invoice when nothing changed,
    and otherwise voids it and issues a new one, so an organisation never owes two first invoices.
    """
    if currency not in settings.CURRENCIES:
        raise ServiceError("Choose one of the offered currencies.", field="currency")
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        _arrears_refuse(organisation)
        _currency_settle(organisation, currency)
        open_first = _open_first_invoice_reuse(
            organisation, plan=plan, billing_cycle=billing_cycle, currency=currency, now=now
        )
        if open_first is not None:
            return open_first
        subscription = subscription_create(
            organisation=organisation,
            plan=plan,
            billing_cycle=billing_cycle,
            currency=currency,
            now=now,
        )
        period = Period(
            start=subscription.current_period_start,
            end=subscription.current_period_end,
            plan=plan,
            billing_cycle=billing_cycle,
            price=subscription.current_price,
        )
        profile = BillingProfile.objects.filter(organisation=organisation).first()
        draft = draft_period_invoice(
            subscription=subscription, period=period, profile=profile, rates=tax_rates(), now=now
        )
        # The first period of a term: after an ended subscription, time without service is
        # not a gap in the periods (billing/ledger.py).
        draft.invoice.starts_term = True
        # Covered in full by the customer balance, it is paid here and the subscription active.
        [invoice] = drafts_save([draft], now=now, settle=invoice_settle)
        audit_record(
            organisation=organisation,
            actor=actor,
            action="subscription.started",
            target=subscription,
            target_label=f"{plan.name} {billing_cycle}",
            changes={
                "plan": {"old": None, "new": plan.code},
                "billing_cycle": {"old": None, "new": billing_cycle},
            },
            now=now,
        )
        queue_invoice_documents([invoice])
    return invoice


def _arrears_refuse(organisation: Organisation) -> None:
    """A new term starts only once what an earlier one left unpaid is paid (billing.arrears;
    the checkout charges it first). Caller's transaction, organisation locked."""
    owed = arrears(organisation=organisation)
    if owed:
        listed = ", ".join(
            f"{invoice.number} {format_money(invoice.amount_due, invoice.currency)}"
            for invoice in owed
        )
        raise ServiceError(
            f"You still owe {listed} from your previous subscription; it is charged before "
            "a new subscription starts.",
            code="arrears",
        )


def _currency_settle(organisation: Organisation, currency: str) -> None:
    """The organisation's currency: it changes only while no invoice was issued in another one
    (caller's transaction, organisation locked)."""
    if currency == organisation.currency:
        return
    if organisation.invoices.exclude(status=Invoice.Status.VOID).exists():
        raise ServiceError(
            f"Your invoices are in {organisation.currency}; the currency cannot change.",
            field="currency",
        )
    organisation.currency = currency
    organisation.save(update_fields=["currency"])


def _open_first_invoice_reuse(
    organisation: Organisation, *, plan: Plan, billing_cycle: str, currency: str, now: datetime
) -> Invoice | None:
    """After a failed first payment: the open first invoice when the same plan, cycle and
    currency are chosen again; otherwise it is voided (None), so only one is ever owed."""
    existing = Subscription.objects.filter(organisation=organisation).first()
    if existing is None or existing.status != Subscription.Status.INCOMPLETE:
        return None
    # This term's first invoice, issued at its anchor; an earlier term's stay owed.
    first = existing.invoices.filter(status=Invoice.Status.OPEN, issued_at__gte=existing.anchor_at)
    open_first = first.first()
    if open_first is not None and (
        existing.plan_id,
        existing.billing_cycle,
        existing.currency,
    ) == (plan.pk, billing_cycle, currency):
        return open_first
    voided = list(first.values_list("pk", flat=True))
    first.update(status=Invoice.Status.VOID, closed_at=now)
    for invoice in Invoice.objects.filter(pk__in=voided, credit_applied__gt=0):
        balance_return(invoice=invoice, now=now)  # the balance it used is back for the new one
    return None
