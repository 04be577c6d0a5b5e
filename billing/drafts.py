"""Invoice drafts: numbering, the invoice with its lines (and overage), stored in one go.

Invoices and their numbers are ours, not Stripe's. Every invoice is built as a draft (the
billing details, tax and due date as of `now`), then numbered and stored together with its
lines and the OverageCharge rows, inside the caller's transaction; the customer balance is
applied to it there, before any charge.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings

from billing.balance import balance_apply
from billing.details import billing_details_snapshot
from billing.models import (
    BillingProfile,
    CarriedCharge,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    OverageCharge,
)
from billing.tax import tax_for
from core.money import format_money
from subscriptions.lifecycle import Period
from subscriptions.models import BillingCycle, PaymentMethodKind, Plan, Subscription
from usage.overage import overage_units


def invoice_year(moment: datetime) -> int:
    """The year of the invoice numbers issued at `moment`: the seller's calendar year."""
    return moment.astimezone(ZoneInfo(settings.SELLER_TIME_ZONE)).year


def invoice_numbers_allocate(*, year: int, count: int) -> list[str]:
    """The next `count` invoice numbers of `year`, e.g. INV-2026-000123.

    The sequence row stays locked until the caller's transaction ends, so numbers are handed
    out in order and a rolled-back transaction gives its numbers back: no gaps, no duplicates.
    """
    InvoiceSequence.objects.bulk_create([InvoiceSequence(year=year)], ignore_conflicts=True)
    sequence = InvoiceSequence.objects.select_for_update().get(year=year)
    first = sequence.last_number + 1
    sequence.last_number += count
    sequence.save(update_fields=["last_number"])
    return [f"INV-{year}-{n:06d}" for n in range(first, first + count)]


@dataclass(frozen=True)
class Overage:
    """A closed usage month's overage: every started 1,000 above the limit at the plan's rate."""

    plan: Plan
    month_start: datetime
    month_end: datetime
    transactions: int
    limit: int
    units: int
    unit_amount: int

    @property
    def amount(self) -> int:
        return self.units * self.unit_amount


@dataclass
class InvoiceDraft:
    invoice: Invoice
    lines: list[InvoiceLine]
    overage: Overage | None = None
    # Owed amounts this invoice bills, each with its line (CarriedCharge.line once saved).
    carried: list[tuple[CarriedCharge, InvoiceLine]] = field(default_factory=list)


def overage_for(
    *, subscription: Subscription, plan: Plan, month_start: datetime, month_end: datetime, used: int
) -> Overage | None:
    """The overage of one usage month at `plan`'s limit and rate (docs/architecture.md#billing);
    None when the month stayed within the limit or the plan has no overage rate."""
    limit = plan.monthly_transactions
    units = overage_units(used=used, limit=limit)
    price = plan.price_for(subscription.currency)
    if not units or price is None or not price.overage_per_1000:
        return None
    return Overage(
        plan=plan,
        month_start=month_start,
        month_end=month_end,
        transactions=used,
        limit=limit,
        units=units,
        unit_amount=price.overage_per_1000,
    )


def _overage_line(overage: Overage, *, position: int, zone, currency: str) -> InvoiceLine:
    def day(moment: datetime) -> str:
        local = moment.astimezone(zone)
        return f"{local.day} {local:%b}"

    thousands = "thousand" if overage.units == 1 else "thousands"
    return InvoiceLine(
        position=position,
        kind=InvoiceLine.Kind.OVERAGE,
        description=(
            f"Overage: {overage.units:,} started {thousands} above {overage.limit:,} "
            f"transactions ({day(overage.month_start)} – {day(overage.month_end)}) "
            f"× {format_money(overage.unit_amount, currency)}"
        ),
        quantity=overage.units,
        unit_amount=overage.unit_amount,
        amount=overage.amount,
        period_start=overage.month_start,
        period_end=overage.month_end,
    )


def _invoice_for(
    *,
    subscription: Subscription,
    kind: str,
    subtotal: int,
    plan_name: str,
    billing_cycle: str,
    period_start: datetime,
    period_end: datetime,
    profile: BillingProfile | None,
    rates: dict[str, tuple[str, int]],
    now: datetime,
) -> Invoice:
    """An unsaved invoice with the billing details, tax and due date as of `now`."""
    organisation = subscription.organisation
    details = billing_details_snapshot(organisation=organisation, profile=profile)
    decision = tax_for(details=details, rates=rates)
    tax = decision.amount(subtotal)
    method = subscription.payment_method_kind
    terms = timedelta(days=settings.INVOICE_PAYMENT_TERMS_DAYS)
    return Invoice(
        organisation=organisation,
        subscription=subscription,
        kind=kind,
        currency=subscription.currency,
        subtotal=subtotal,
        tax_amount=tax,
        total=subtotal + tax,
        tax_rule=decision.rule,
        tax_rate_bp=decision.rate_bp,
        tax_name=decision.name,
        tax_note=decision.note,
        plan_name=plan_name,
        billing_cycle=billing_cycle,
        period_start=period_start,
        period_end=period_end,
        billing_details=details,
        payment_method_kind=method,
        issued_at=now,
        due_at=now if method == PaymentMethodKind.CARD else now + terms,
    )


def draft_period_invoice(
    *,
    subscription: Subscription,
    period: Period,
    profile: BillingProfile | None,
    rates: dict[str, tuple[str, int]],
    now: datetime,
    overage: Overage | None = None,
    carried: list[CarriedCharge] = (),
) -> InvoiceDraft:
    """A period invoice, with the overage of the usage month that just closed, if any, and
    the amounts carried to it (each a line, taxed as the rest of the invoice)."""
    organisation = subscription.organisation
    cycle_label = BillingCycle(period.billing_cycle).label.lower()
    invoice = _invoice_for(
        subscription=subscription,
        kind=Invoice.Kind.SUBSCRIPTION,
        subtotal=(
            period.price
            + (overage.amount if overage is not None else 0)
            + sum(charge.amount for charge in carried)
        ),
        plan_name=period.plan.name,
        billing_cycle=period.billing_cycle,
        period_start=period.start,
        period_end=period.end,
        profile=profile,
        rates=rates,
        now=now,
    )
    line = InvoiceLine(
        position=1,
        kind=InvoiceLine.Kind.PLAN,
        description=f"{period.plan.name} plan, {cycle_label} subscription",
        quantity=1,
        unit_amount=period.price,
        amount=period.price,
        period_start=period.start,
        period_end=period.end,
    )
    lines = [line]
    if overage is not None:
        lines.append(
            _overage_line(
                overage, position=2, zone=organisation.tzinfo, currency=subscription.currency
            )
        )
    carried_lines = []
    for charge in carried:
        line = _carried_line(charge, position=len(lines) + 1)
        lines.append(line)
        carried_lines.append((charge, line))
    return InvoiceDraft(invoice=invoice, lines=lines, overage=overage, carried=carried_lines)


def _carried_line(charge: CarriedCharge, *, position: int) -> InvoiceLine:
    return InvoiceLine(
        position=position,
        kind=InvoiceLine.Kind.PRORATION,
        description=charge.description,
        quantity=1,
        unit_amount=charge.amount,
        amount=charge.amount,
        period_start=charge.period_start,
        period_end=charge.period_end,
    )


def draft_overage_invoice(
    *,
    subscription: Subscription,
    overage: Overage,
    profile: BillingProfile | None,
    rates: dict[str, tuple[str, int]],
    now: datetime,
) -> InvoiceDraft:
    """An overage-only invoice for one closed usage month of an annual plan."""
    organisation = subscription.organisation
    invoice = _invoice_for(
        subscription=subscription,
        kind=Invoice.Kind.OVERAGE,
        subtotal=overage.amount,
        plan_name=overage.plan.name,
        billing_cycle=subscription.billing_cycle,
        period_start=overage.month_start,
        period_end=overage.month_end,
        profile=profile,
        rates=rates,
        now=now,
    )
    line = _overage_line(
        overage, position=1, zone=organisation.tzinfo, currency=subscription.currency
    )
    return InvoiceDraft(invoice=invoice, lines=[line], overage=overage)


def drafts_save(
    drafts: list[InvoiceDraft], *, now: datetime, settle: Callable[..., None]
) -> list[Invoice]:
    """Number and store invoices, then apply the customer balance to them before anything is
    charged (billing.balance.balance_apply), inside the caller's transaction.

    An invoice the balance covers in full owes nothing and is never charged: `settle(invoice,
    now=now)` marks it paid with what follows (billing.payments.invoice_settle for most
    callers). It is passed in because billing.payments imports this module (through
    billing.upgrades) and may not be imported back.
    """
    if not drafts:
        return []
    numbers = invoice_numbers_allocate(year=invoice_year(now), count=len(drafts))
    for draft, number in zip(drafts, numbers, strict=True):
        draft.invoice.number = number
    invoices = Invoice.objects.bulk_create([draft.invoice for draft in drafts])
    lines = []
    for draft, invoice in zip(drafts, invoices, strict=True):
        for line in draft.lines:
            line.invoice = invoice
            lines.append(line)
    InvoiceLine.objects.bulk_create(lines)
    charges = [
        OverageCharge(
            organisation_id=invoice.organisation_id,
            subscription_id=invoice.subscription_id,
            invoice=invoice,
            month_start=draft.overage.month_start,
            month_end=draft.overage.month_end,
            transactions=draft.overage.transactions,
            transaction_limit=draft.overage.limit,
            units=draft.overage.units,
            unit_amount=draft.overage.unit_amount,
            amount=draft.overage.amount,
            currency=invoice.currency,
            created_at=now,
        )
        for draft, invoice in zip(drafts, invoices, strict=True)
        if draft.overage is not None
    ]
    if charges:
        OverageCharge.objects.bulk_create(charges)
    billed = [charge for draft in drafts for charge, _ in draft.carried]
    for draft in drafts:
        for charge, line in draft.carried:
            charge.line = line  # saved above, so it has its id
    if billed:
        CarriedCharge.objects.bulk_update(billed, ["line"])
    for invoice in balance_apply(invoices, now=now):
        settle(invoice, now=now)
    return invoices
