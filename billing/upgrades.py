"""Upgrade Plan: the quote (billing.proration), the upgrade invoice, and what its charge
changes: paid, the new plan applies at once; declined, the old plan stays.

The amount charged is the amount quoted, to the cent: confirming recomputes it and refuses
(QuoteChanged) when it moved since the page showed it. A quote under the processor's minimum
charge is not charged: the upgrade applies at once and the amount is carried to the next
invoice (docs/architecture.md#decision-amounts-below-the-minimum-charge-are-carried).
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from django.db import transaction
from django.utils import timezone

from accounts.audit import Actor, audit_record
from accounts.models import Organisation
from billing.balance import balance_return
from billing.details import billing_details_snapshot
from billing.drafts import InvoiceDraft, drafts_save
from billing.models import BillingProfile, CarriedCharge, Invoice, InvoiceLine
from billing.proration import prorate
from billing.queueing import queue_invoice_documents
from billing.tax import TaxDecision, tax_for
from core.errors import ServiceError
from core.money import minimum_charge
from subscriptions.models import PaymentMethodKind, Plan, PlanChange, Subscription


class UpgradeError(StrEnum):
    """The `code` of a ServiceError an upgrade raises, for the page to tell them apart."""

    QUOTE_CHANGED = "quote_changed"
    SUSPENDED = "suspended"
    RENEWAL_PENDING = "renewal_pending"


@dataclass(frozen=True)
class UpgradeQuote:
    """What an upgrade costs if confirmed at `at`: the prorated difference plus tax."""

    plan: Plan
    at: datetime
    period_end: datetime
    currency: str
    subtotal: int
    tax: TaxDecision
    tax_amount: int
    minimum_charge: int = 0  # the processor's, in this currency

    @property
    def total(self) -> int:
        return self.subtotal + self.tax_amount

    @property
    def carried(self) -> bool:
        """Too small to charge: the upgrade applies now, the amount goes on the next invoice."""
        return self.total < self.minimum_charge


class QuoteChanged(ServiceError):
    """The amount moved between the quote shown and the confirmation: show the new one."""

    def __init__(self, quote: UpgradeQuote, *, shown: int):
        super().__init__(
            "The amount changed since the quote was shown, because less of your billing period "
            "is left. Please check the new amount and confirm again.",
            code=UpgradeError.QUOTE_CHANGED,
        )
        self.quote = quote
        self.shown = shown


def upgrade_plans(*, subscription: Subscription) -> list[Plan]:
    """The public plans above the current one that are priced in the subscription's currency."""
    plans = Plan.objects.filter(is_public=True, rank__gt=subscription.plan.rank).prefetch_related(
        "prices"
    )
    return [plan for plan in plans.order_by("rank") if plan.price_for(subscription.currency)]


def _check_upgrade(subscription: Subscription, plan: Plan) -> None:
    organisation = subscription.organisation
    if subscription.status == Subscription.Status.SUSPENDED:
        raise ServiceError(
            "Your account is suspended for an unpaid invoice. Pay it first (Settings > Billing > "
            "Payment Method > Retry Payment), then upgrade.",
            code=UpgradeError.SUSPENDED,
        )
    if subscription.status != Subscription.Status.ACTIVE:
        raise ServiceError(
            f"The subscription of {organisation.name} is "
            f"{subscription.get_status_display().lower()}; it cannot be upgraded now."
        )
    if subscription.cancel_at_period_end:
        raise ServiceError("Your subscription is cancelled. Undo the cancellation to upgrade.")
    if plan.pk == subscription.plan_id:
        raise ServiceError(f"You are already on the {plan.name} plan.", field="plan")
    if plan.rank < subscription.plan.rank:
        raise ServiceError(
            f"{plan.name} is a lower plan: use Change Plan to downgrade at your renewal date.",
            field="plan",
        )
    if not plan.is_public or plan.price_for(subscription.currency) is None:
        raise ServiceError(f"The {plan.name} plan is not available.", field="plan")


def upgrade_quote(*, subscription: Subscription, plan: Plan, now: datetime) -> UpgradeQuote:
    """The prorated charge for upgrading to `plan` now (billing.proration.prorate)."""
    _check_upgrade(subscription, plan)
    # Between the end of a period and the billing run that renews it, the period left is
    # nothing: the upgrade would be free. It waits for the renewal (minutes at most).
    if subscription.current_period_end <= now:
        raise ServiceError(
            "Your renewal is being processed right now. Upgrade in a few minutes, once the new "
            "period has started.",
            code=UpgradeError.RENEWAL_PENDING,
        )
    new_price = plan.price_for(subscription.currency).amount_for(subscription.billing_cycle)
    subtotal = prorate(
        old_price=subscription.current_price,
        new_price=new_price,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
        at=now,
    )
    if subtotal <= 0:
        # Seconds before the renewal the prorated difference rounds to nothing.
        ends = timezone.localtime(subscription.current_period_end, subscription.organisation.tzinfo)
        raise ServiceError(
            f"Your period ends on {ends:%-d %b %Y, %H:%M %Z}; upgrade after the renewal.",
            code=UpgradeError.RENEWAL_PENDING,
        )
    profile = BillingProfile.objects.filter(organisation_id=subscription.organisation_id).first()
    details = billing_details_snapshot(organisation=subscription.organisation, profile=profile)
    decision = tax_for(details=details)
    return UpgradeQuote(
        plan=plan,
        at=now,
        period_end=subscription.current_period_end,
        currency=subscription.currency,
        subtotal=subtotal,
        tax=decision,
        tax_amount=decision.amount(subtotal),
        minimum_charge=minimum_charge(subscription.currency),
    )


def subscription_upgrade(
    *, organisation: Organisation, actor: Actor, plan: Plan, quoted_total: int, now: datetime
) -> Invoice | None:
    """Upgrade Plan: one invoice for the prorated difference, to be charged
    at once by the caller; the new plan applies only when that charge succeeds. The customer
    balance goes first (billing.balance): an invoice it covers in full comes back paid, the
    new plan applied, with nothing to charge.

    A quote under the processor's minimum charge makes no invoice (None): the new plan applies
    at once and the amount is carried to the next period invoice (upgrade_carry).

    The amount is recomputed here and must equal the quote the Admin confirmed, to the cent;
    otherwise QuoteChanged carries the new quote and nothing is created. A second click while
    the first upgrade to the same plan is in flight returns the same invoice.
    """
    with transaction.atomic():
        subscription = (
            Subscription.objects.select_for_update(of=("self",))
            .select_related("organisation", "plan")
            .prefetch_related("plan__prices")
            .get(organisation=organisation)
        )
        pending = subscription.plan_changes.filter(status=PlanChange.Status.PENDING).first()
        if pending is not None:
            invoice = Invoice.objects.filter(plan_change=pending).first()
            if pending.to_plan_id == plan.pk and invoice is not None:
                return invoice
            raise ServiceError(
                f"An upgrade to {pending.to_plan.name} is being processed. Try again in a minute."
            )
        quote = upgrade_quote(subscription=subscription, plan=plan, now=now)
        if quote.total != quoted_total:
            raise QuoteChanged(quote, shown=quoted_total)
        change = PlanChange.objects.create(
            subscription=subscription,
            kind=PlanChange.Kind.UPGRADE,
            status=PlanChange.Status.PENDING,
            from_plan=subscription.plan,
            to_plan=plan,
            billing_cycle=subscription.billing_cycle,
            quote_subtotal=quote.subtotal,
            quote_tax=quote.tax_amount,
            quote_total=quote.total,
            created_by=actor.user,
            created_at=now,
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="subscription.upgrade_requested",
            target=subscription,
            target_label=f"{subscription.plan.name} → {plan.name}",
            changes={
                "plan": {"old": subscription.plan.code, "new": plan.code},
                "quote_total": {"old": None, "new": quote.total},
            },
            now=now,
        )
        invoice = None
        if not quote.carried:
            draft = _upgrade_draft(subscription, change=change, quote=quote, now=now)
            # Covered in full by the customer balance, it is paid and the plan applies here.
            [invoice] = drafts_save([draft], now=now, settle=_paid_by_balance)
        if invoice is None:
            upgrade_carry(change, now=now)
        else:
            queue_invoice_documents([invoice])
    return invoice


def upgrade_carry(change: PlanChange, *, now: datetime) -> CarriedCharge:
    """An upgrade quoted under the minimum charge: it applies now, and its stored quote subtotal
    becomes an owed line of the next period invoice, taxed as that invoice (caller's
    transaction, subscription locked)."""
    subscription = change.subscription
    day = timezone.localtime(now, subscription.organisation.tzinfo)
    charge = CarriedCharge.objects.create(
        organisation_id=subscription.organisation_id,
        subscription=subscription,
        kind=CarriedCharge.Kind.UPGRADE,
        plan_change=change,
        description=(
            f"Upgrade from {change.from_plan.name} to {change.to_plan.name} on "
            f"{day:%-d %b %Y}, prorated (carried: below the minimum charge)"
        ),
        amount=change.quote_subtotal,
        currency=subscription.currency,
        period_start=now,
        period_end=subscription.current_period_end,
        created_at=now,
    )
    _change_apply(change, now=now)
    return charge


def _upgrade_draft(
    subscription: Subscription, *, change: PlanChange, quote: UpgradeQuote, now: datetime
) -> InvoiceDraft:
    """The upgrade invoice: one prorated line for the rest of the period, charged at once."""
    profile = BillingProfile.objects.filter(organisation_id=subscription.organisation_id).first()
    invoice = Invoice(
        organisation=subscription.organisation,
        subscription=subscription,
        plan_change=change,
        kind=Invoice.Kind.UPGRADE,
        currency=subscription.currency,
        subtotal=quote.subtotal,
        tax_amount=quote.tax_amount,
        total=quote.total,
        tax_rule=quote.tax.rule,
        tax_rate_bp=quote.tax.rate_bp,
        tax_name=quote.tax.name,
        tax_note=quote.tax.note,
        plan_name=quote.plan.name,
        billing_cycle=subscription.billing_cycle,
        period_start=now,
        period_end=subscription.current_period_end,
        billing_details=billing_details_snapshot(
            organisation=subscription.organisation, profile=profile
        ),
        payment_method_kind=PaymentMethodKind.CARD,
        issued_at=now,
        due_at=now,
    )
    line = InvoiceLine(
        position=1,
        kind=InvoiceLine.Kind.PRORATION,
        description=(
            f"Upgrade from {subscription.plan.name} to {quote.plan.name}, "
            "prorated for the rest of the billing period"
        ),
        quantity=1,
        unit_amount=quote.subtotal,
        amount=quote.subtotal,
        period_start=now,
        period_end=subscription.current_period_end,
    )
    return InvoiceDraft(invoice=invoice, lines=[line])


def _paid_by_balance(invoice: Invoice, *, now: datetime) -> None:
    """The customer balance paid the upgrade invoice in full at issue (billing.balance): it is
    paid and the new plan applies now, what billing.payments.invoice_settle does for an
    upgrade (payments imports this module, so it cannot be imported here). Caller's
    transaction, subscription locked and active: nothing else follows from the payment."""
    invoice.status = Invoice.Status.PAID
    invoice.paid_at = now
    invoice.closed_at = now
    invoice.save(update_fields=["status", "paid_at", "closed_at"])
    upgrade_apply(invoice, now=now)


def upgrade_apply(invoice: Invoice, *, now: datetime) -> None:
    """The upgrade invoice is paid: the new plan and its limits apply now (caller's transaction).

    A downgrade scheduled for the renewal is cancelled: the customer chose a bigger plan since.
    """
    change = PlanChange.objects.select_for_update().get(pk=invoice.plan_change_id)
    _change_apply(change, now=now)


def _change_apply(change: PlanChange, *, now: datetime) -> None:
    """The pending upgrade applies now: its plan and price; a scheduled downgrade is cancelled
    (caller's transaction, change locked)."""
    if change.status != PlanChange.Status.PENDING:
        return
    subscription = (
        Subscription.objects.select_for_update()
        .select_related("organisation")
        .get(pk=change.subscription_id)
    )
    old_plan_id = subscription.plan_id
    subscription.plan = change.to_plan
    subscription.current_price = change.to_plan.price_for(subscription.currency).amount_for(
        subscription.billing_cycle
    )
    subscription.save(update_fields=["plan", "current_price"])
    change.status = PlanChange.Status.APPLIED
    change.effective_at = now
    change.closed_at = now
    change.save(update_fields=["status", "effective_at", "closed_at"])
    subscription.plan_changes.filter(status=PlanChange.Status.SCHEDULED).update(
        status=PlanChange.Status.CANCELED, closed_at=now
    )
    audit_record(
        organisation=subscription.organisation,
        actor=Actor(user=change.created_by),
        action="subscription.upgraded",
        target=subscription,
        target_label=f"{change.from_plan.name} → {change.to_plan.name}",
        changes={"plan_id": {"old": old_plan_id, "new": change.to_plan_id}},
        now=now,
    )


def upgrade_declined(invoice: Invoice, *, now: datetime) -> None:
    """A declined upgrade leaves the old plan: its invoice is voided, nothing is owed, and the
    customer balance it used is given back."""
    voided = Invoice.objects.filter(pk=invoice.pk, status=Invoice.Status.OPEN).update(
        status=Invoice.Status.VOID, closed_at=now
    )
    if voided:
        balance_return(invoice=invoice, now=now)
    PlanChange.objects.filter(pk=invoice.plan_change_id, status=PlanChange.Status.PENDING).update(
        status=PlanChange.Status.FAILED, closed_at=now
    )
