"""The billing engine: billing details, cards, invoices, charges and the billing run.

Rules: DESIGN.md section 2 (Billing periods, Invoices, Bank transfer and purchase order, Card
expiry). Stripe is only the card processor (billing/gateway.py); plans, periods, invoices and
numbering are ours. Network calls to Stripe never run inside a database transaction: a payment
attempt row is committed first (its id gives the idempotency key), then the card is charged,
then the outcome is recorded; a retry reuses the same key, so a card is never charged twice.
"""

import gc
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, Max, OuterRef, Q
from django.utils import timezone

from accounts.audit import Actor, audit_record, changes_between, reason_change
from accounts.emails import email_send
from accounts.models import Organisation
from accounts.selectors import billing_recipients
from accounts.services import organisation_lock
from billing import gateway
from billing.models import (
    BillingProfile,
    Invoice,
    InvoiceDocument,
    InvoiceLine,
    InvoiceSequence,
    OverageCharge,
    Payment,
    PaymentMethod,
    TaxRate,
)
from billing.tax import TaxDecision, tax_decide
from core.errors import ServiceError
from core.links import absolute_url
from core.money import format_money
from core.observability import log_context
from core.queueing import enqueue
from subscriptions.lifecycle import (
    Period,
    scheduled_changes_prefetch,
    subscription_create,
    subscription_next_period,
    subscriptions_save_periods,
)
from subscriptions.models import BillingCycle, PaymentMethodKind, Plan, PlanChange, Subscription
from subscriptions.states import RENEWING, subscription_transition
from usage.billing import annual_months_over_limit, months_usage
from usage.months import usage_month_of
from usage.overage import overage_units

logger = logging.getLogger(__name__)

# A charge whose outcome we have not heard back is retried (same key) after this long.
PENDING_RETRY_AFTER = timedelta(minutes=2)
# The charge job stops after this many charges left unanswered in one run (Stripe down/slow).
UNANSWERED_CHARGES_STOP = 3


# Billing details ----------------------------------------------------------------------------


def billing_details_snapshot(*, organisation: Organisation, profile: BillingProfile | None) -> dict:
    return (profile or BillingProfile(organisation=organisation)).snapshot()


def billing_profile_update(
    *, organisation: Organisation, actor: Actor, now: datetime, **fields
) -> BillingProfile:
    """Billing Information: applies to invoices issued from now on; past invoices never change."""
    with transaction.atomic():
        organisation_lock(organisation)
        profile, _ = BillingProfile.objects.get_or_create(organisation=organisation)
        old = {name: str(getattr(profile, name)) for name in fields}
        for name, value in fields.items():
            setattr(profile, name, value)
        changes = changes_between(old, {name: str(value) for name, value in fields.items()})
        if changes:
            profile.save()
            audit_record(
                organisation=organisation,
                actor=actor,
                action="billing.details_updated",
                target=profile,
                target_label="Billing Information",
                changes=changes,
                now=now,
            )
    return profile


def _tax_rates() -> dict[str, tuple[str, int]]:
    return {rate.country.code: (rate.name, rate.rate_bp) for rate in TaxRate.objects.all()}


def tax_for(*, details: dict, rates: dict[str, tuple[str, int]] | None = None) -> TaxDecision:
    return tax_decide(
        country=details.get("country", ""),
        vat_number=details.get("vat_number", ""),
        seller_country=settings.SELLER["country"],
        rates=_tax_rates() if rates is None else rates,
    )


# Invoices -------------------------------------------------------------------------------------


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
class _Overage:
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
class _Draft:
    invoice: Invoice
    lines: list[InvoiceLine]
    overage: _Overage | None = None


def _overage_for(
    *, subscription: Subscription, plan: Plan, month_start: datetime, month_end: datetime, used: int
) -> _Overage | None:
    """The overage of one usage month at `plan`'s limit and rate (DESIGN.md section 2, Usage);
    None when the month stayed within the limit or the plan has no overage rate."""
    limit = plan.monthly_transactions
    units = overage_units(used=used, limit=limit)
    price = plan.price_for(subscription.currency)
    if not units or price is None or not price.overage_per_1000:
        return None
    return _Overage(
        plan=plan,
        month_start=month_start,
        month_end=month_end,
        transactions=used,
        limit=limit,
        units=units,
        unit_amount=price.overage_per_1000,
    )


def _overage_line(overage: _Overage, *, position: int, zone, currency: str) -> InvoiceLine:
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


def _draft_period_invoice(
    *,
    subscription: Subscription,
    period: Period,
    profile: BillingProfile | None,
    rates: dict[str, tuple[str, int]],
    now: datetime,
    overage: _Overage | None = None,
) -> _Draft:
    """A period invoice, with the overage of the usage month that just closed, if any."""
    organisation = subscription.organisation
    cycle_label = BillingCycle(period.billing_cycle).label.lower()
    invoice = _invoice_for(
        subscription=subscription,
        kind=Invoice.Kind.SUBSCRIPTION,
        subtotal=period.price + (overage.amount if overage is not None else 0),
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
    return _Draft(invoice=invoice, lines=lines, overage=overage)


def _draft_overage_invoice(
    *,
    subscription: Subscription,
    overage: _Overage,
    profile: BillingProfile | None,
    rates: dict[str, tuple[str, int]],
    now: datetime,
) -> _Draft:
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
    return _Draft(invoice=invoice, lines=[line], overage=overage)


def _save_drafts(drafts: list[_Draft], *, now: datetime) -> list[Invoice]:
    """Number and store invoices (inside the caller's transaction)."""
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
    return invoices


def _after_issue(invoices: Iterable[Invoice]) -> None:
    """Render PDFs and send "invoice issued" emails in the background once committed."""
    ids = [invoice.pk for invoice in invoices]
    if ids:
        transaction.on_commit(lambda: _enqueue_documents(ids))


def _enqueue_documents(ids: list[int]) -> None:
    from billing.tasks import render_invoice_documents

    enqueue(render_invoice_documents, ids, catch_up="render_invoice_pdfs")


def billing_run_issue(*, now: datetime, batch_size: int = 500, limit: int | None = None) -> int:
    """Issue every period invoice due by `now` (DESIGN.md section 2, Billing periods).

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
            rates = _tax_rates()
            overages = _closed_months_overage(subscriptions)
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
                    _draft_period_invoice(
                        subscription=subscription,
                        period=period,
                        profile=profile,
                        rates=rates,
                        now=now,
                        overage=overage,
                    )
                )
            subscriptions_save_periods(subscriptions)
            invoices = _save_drafts(drafts, now=now)
            if downgraded:
                from subscriptions.plan_changes import downgrade_apply_flows

                for subscription, change in downgraded:
                    downgrade_apply_flows(subscription=subscription, change=change, now=now)
            _after_issue(invoices)
        issued += len(invoices)
        # Model instances hold reference cycles (related-object caches); free each batch's
        # now, so a run over 100,000 subscriptions uses the memory of one batch.
        del subscriptions, drafts, invoices, downgraded, overages
        gc.collect()
    return issued


def _closed_months_overage(subscriptions: list[Subscription]) -> dict[int, _Overage]:
    """The overage of each monthly subscription's closing period (its usage month), by
    subscription id, skipping months already billed. One aggregate query for the batch, plus
    one for the billed months only when some month went over its limit."""
    monthly = [s for s in subscriptions if s.billing_cycle == BillingCycle.MONTHLY]
    usage = months_usage([(s.organisation_id, s.current_period_start) for s in monthly])
    overages = {}
    for subscription in monthly:
        used = usage.get((subscription.organisation_id, subscription.current_period_start), 0)
        overage = _overage_for(
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


# Annual plans bill a usage month's overage on its own invoice once it closes. Only months that
# started within this window are looked at: it bounds the scan and still covers a job that did
# not run for two months. A closed month started at least 27 days ago (28 days, less an hour
# over a daylight-saving change).
OVERAGE_LOOKBACK = timedelta(days=100)
# Overage is owed for the transactions made, so a suspended subscription is billed too.
OVERAGE_STATUSES = RENEWING | {Subscription.Status.SUSPENDED}


def overage_invoices_issue(*, now: datetime, batch_size: int = 200) -> int:
    """Issue an overage-only invoice for each closed usage month of an annual plan that went
    over the plan's monthly limit (DESIGN.md section 2, Billing periods), once per month.

    Candidates come from one aggregate query over the usage counters; each batch then locks its
    subscriptions (SKIP LOCKED, so runs can overlap), re-checks what is billed under the lock,
    and issues the invoices and their OverageCharge rows (unique per subscription and month) in
    one transaction. The limit and rate are those of the subscription's current plan. Card
    invoices are charged by the charge job; bank transfer and PO ones are due in N days.
    """
    candidates = annual_months_over_limit(
        since=now - OVERAGE_LOOKBACK, before=now - timedelta(days=27), statuses=OVERAGE_STATUSES
    )
    if not candidates:
        return 0
    billed = set(
        OverageCharge.objects.filter(
            subscription_id__in={c.subscription_id for c in candidates},
            month_start__gte=now - OVERAGE_LOOKBACK,
        ).values_list("subscription_id", "month_start")
    )
    due = [c for c in candidates if (c.subscription_id, c.month_start) not in billed]
    issued = 0
    for offset in range(0, len(due), batch_size):
        chunk = due[offset : offset + batch_size]
        with transaction.atomic():
            locked = {
                s.pk: s
                for s in Subscription.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("organisation", "organisation__billing_profile", "plan")
                .prefetch_related("plan__prices")
                .filter(
                    pk__in={c.subscription_id for c in chunk},
                    billing_cycle=BillingCycle.ANNUAL,
                    status__in=OVERAGE_STATUSES,
                    cancel_at_period_end=False,
                )
            }
            billed = set(
                OverageCharge.objects.filter(
                    subscription_id__in=list(locked),
                    month_start__in={c.month_start for c in chunk},
                ).values_list("subscription_id", "month_start")
            )
            rates = _tax_rates()
            drafts = []
            for candidate in chunk:
                subscription = locked.get(candidate.subscription_id)
                if subscription is None or (subscription.pk, candidate.month_start) in billed:
                    continue
                start, end = usage_month_of(subscription, candidate.month_start)
                if start != candidate.month_start or end > now:
                    continue  # still open (or not a month of this term)
                overage = _overage_for(
                    subscription=subscription,
                    plan=subscription.plan,
                    month_start=start,
                    month_end=end,
                    used=candidate.transactions,
                )
                if overage is None:
                    continue
                drafts.append(
                    _draft_overage_invoice(
                        subscription=subscription,
                        overage=overage,
                        profile=getattr(subscription.organisation, "billing_profile", None),
                        rates=rates,
                        now=now,
                    )
                )
            invoices = _save_drafts(drafts, now=now)
            _after_issue(invoices)
        issued += len(invoices)
    return issued


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
        if currency != organisation.currency:
            if organisation.invoices.exclude(status=Invoice.Status.VOID).exists():
                raise ServiceError(
                    f"Your invoices are in {organisation.currency}; the currency cannot change.",
                    field="currency",
                )
            organisation.currency = currency
            organisation.save(update_fields=["currency"])
        existing = Subscription.objects.filter(organisation=organisation).first()
        if existing is not None and existing.status == Subscription.Status.INCOMPLETE:
            open_first = existing.invoices.filter(status=Invoice.Status.OPEN).first()
            if open_first is not None and (
                existing.plan_id,
                existing.billing_cycle,
                existing.currency,
            ) == (plan.pk, billing_cycle, currency):
                return open_first
            existing.invoices.filter(status=Invoice.Status.OPEN).update(
                status=Invoice.Status.VOID, closed_at=now
            )
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
        draft = _draft_period_invoice(
            subscription=subscription, period=period, profile=profile, rates=_tax_rates(), now=now
        )
        # The first period of a term: after an ended subscription, time without service is
        # not a gap in the periods (billing/ledger.py).
        draft.invoice.starts_term = True
        [invoice] = _save_drafts([draft], now=now)
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
        _after_issue([invoice])
    return invoice


# PDFs -----------------------------------------------------------------------------------------


def invoice_document_original(*, invoice: Invoice, now: datetime) -> InvoiceDocument:
    """The PDF rendered when the invoice was issued; rendered now if that has not happened yet.

    Rendering is idempotent: the unique constraint keeps one original per invoice.
    """
    document = InvoiceDocument.objects.filter(
        invoice=invoice, kind=InvoiceDocument.Kind.ORIGINAL
    ).first()
    if document is not None:
        return document
    from billing.pdf import invoice_pdf_bytes

    pdf = invoice_pdf_bytes(invoice=invoice)
    try:
        with transaction.atomic():
            document = InvoiceDocument.objects.create(
                invoice=invoice, kind=InvoiceDocument.Kind.ORIGINAL, pdf=pdf, created_at=now
            )
            _email_invoice_issued(invoice)
    except IntegrityError:  # another worker stored it first
        document = InvoiceDocument.objects.get(invoice=invoice, kind=InvoiceDocument.Kind.ORIGINAL)
    return document


def invoice_revised_copy_issue(
    *, invoice: Invoice, actor: Actor, reason: str, now: datetime
) -> InvoiceDocument:
    """Ops issue a revised copy of an issued invoice (DESIGN.md section 2, Invoices): a new PDF
    with the organisation's current billing details, marked "Revised" with today's date, kept
    beside the original, which is never changed. Amounts stay those of the original."""
    reason = reason.strip()
    if not reason:
        raise ServiceError("Give the reason for the revised copy.", field="reason")
    if invoice.status == Invoice.Status.VOID:
        raise ServiceError(f"Invoice {invoice.number} is void; it has no copy to revise.")
    from billing.pdf import invoice_pdf_bytes

    # The original first, so it keeps the details it was issued with.
    invoice_document_original(invoice=invoice, now=now)
    profile = BillingProfile.objects.filter(organisation_id=invoice.organisation_id).first()
    details = billing_details_snapshot(organisation=invoice.organisation, profile=profile)
    pdf = invoice_pdf_bytes(invoice=invoice, revised_at=now, billing_details=details)
    with transaction.atomic():
        document = InvoiceDocument.objects.create(
            invoice=invoice,
            kind=InvoiceDocument.Kind.REVISED,
            pdf=pdf,
            created_at=now,
            created_by=actor.user,
        )
        audit_record(
            organisation=invoice.organisation,
            actor=actor,
            action="billing.revised_copy_issued",
            target=invoice,
            target_label=invoice.number,
            changes=reason_change(reason),
            now=now,
        )
    return document


def invoice_documents_render_pending(*, now: datetime, limit: int = 200) -> int:
    """Render the original PDF of invoices that do not have one yet (a scheduled job)."""
    pending = (
        Invoice.objects.filter(
            ~Exists(
                InvoiceDocument.objects.filter(
                    invoice=OuterRef("pk"), kind=InvoiceDocument.Kind.ORIGINAL
                )
            )
        )
        .select_related("organisation")
        .order_by("issued_at", "pk")[:limit]
    )
    rendered = 0
    for invoice in pending:
        with log_context(organisation_id=invoice.organisation_id, invoice_id=invoice.pk):
            try:
                invoice_document_original(invoice=invoice, now=now)
            except Exception:
                # One invoice that cannot be rendered must not hold back the others; it is
                # tried again on the next run and the error names it.
                logger.exception("Could not render the PDF of invoice %s", invoice.number)
                continue
        rendered += 1
    return rendered


def _invoice_url(invoice: Invoice) -> str:
    return absolute_url("billing:invoices", invoice.organisation.slug)


def _email_invoice_issued(invoice: Invoice) -> None:
    email_send(
        template="invoice_issued",
        to=billing_recipients(organisation=invoice.organisation),
        context={"invoice": invoice, "invoice_url": _invoice_url(invoice)},
        organisation=invoice.organisation,
    )


# Cards ----------------------------------------------------------------------------------------


def stripe_customer_ensure(*, organisation: Organisation) -> str:
    """The organisation's Stripe customer, created once (idempotency key from our own row)."""
    profile, _ = BillingProfile.objects.get_or_create(organisation=organisation)
    if profile.stripe_customer_id:
        return profile.stripe_customer_id
    customer_id = gateway.customer_create(
        name=organisation.name,
        email=organisation.primary_email,
        organisation_id=organisation.pk,
        idempotency_key=f"customer-organisation-{organisation.pk}",
    )
    BillingProfile.objects.filter(pk=profile.pk, stripe_customer_id="").update(
        stripe_customer_id=customer_id
    )
    profile.refresh_from_db(fields=["stripe_customer_id"])
    return profile.stripe_customer_id


def card_setup_begin(*, organisation: Organisation) -> str:
    """A SetupIntent's client secret for Stripe.js to collect a card (numbers never reach us)."""
    customer_id = stripe_customer_ensure(organisation=organisation)
    _setup_intent_id, client_secret = gateway.setup_intent_create(customer_id=customer_id)
    return client_secret


def _card_expires_at(exp_month: int, exp_year: int) -> datetime:
    if exp_month == 12:
        return datetime(exp_year + 1, 1, 1, tzinfo=UTC)
    return datetime(exp_year, exp_month + 1, 1, tzinfo=UTC)


def card_setup_complete(
    *, organisation: Organisation, actor: Actor, setup_intent_id: str, now: datetime
) -> PaymentMethod:
    """Update Card: the confirmed card becomes the one charged from the next billing date."""
    customer_id = stripe_customer_ensure(organisation=organisation)
    try:
        card = gateway.setup_intent_card(setup_intent_id=setup_intent_id, customer_id=customer_id)
    except gateway.PaymentError as error:
        # The code tells the page whether Stripe is reachable (`gateway_unavailable`).
        raise ServiceError(error.message, code=error.code or "invalid") from error
    if card.brand not in settings.ACCEPTED_CARD_BRANDS:
        gateway.card_detach(payment_method_id=card.payment_method_id)
        raise ServiceError(
            "We accept Visa, Mastercard and American Express cards. Please use one of those."
        )
    gateway.card_make_default(customer_id=customer_id, payment_method_id=card.payment_method_id)
    with transaction.atomic():
        organisation_lock(organisation)
        existing = PaymentMethod.objects.filter(
            stripe_payment_method_id=card.payment_method_id
        ).first()
        if existing is not None:
            if existing.organisation_id != organisation.pk:
                raise ServiceError("This card could not be saved. Please enter it again.")
            return existing
        previous = PaymentMethod.objects.filter(
            organisation=organisation, status=PaymentMethod.Status.ACTIVE
        ).first()
        if previous is not None:
            previous.status = PaymentMethod.Status.REPLACED
            previous.replaced_at = now
            previous.save(update_fields=["status", "replaced_at"])
        method = PaymentMethod.objects.create(
            organisation=organisation,
            stripe_payment_method_id=card.payment_method_id,
            brand=card.brand,
            last4=card.last4,
            exp_month=card.exp_month,
            exp_year=card.exp_year,
            expires_at=_card_expires_at(card.exp_month, card.exp_year),
            created_at=now,
            created_by=actor.user,
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="billing.card_updated",
            target=method,
            target_label=str(method),
            changes={"card": {"old": str(previous) if previous else None, "new": str(method)}},
            now=now,
        )
    return method


def card_expiry_reminders_send(*, now: datetime) -> int:
    """Email Admins and Billing contacts once, 30 days before the card on file expires."""
    due = PaymentMethod.objects.filter(
        status=PaymentMethod.Status.ACTIVE,
        expiry_reminder_sent_at__isnull=True,
        expires_at__lte=now + timedelta(days=30),
        expires_at__gt=now,
    ).values_list("pk", flat=True)
    sent = 0
    for pk in list(due):
        with transaction.atomic():
            # The conditional update claims the reminder: a second run finds nothing to send.
            claimed = PaymentMethod.objects.filter(
                pk=pk, expiry_reminder_sent_at__isnull=True
            ).update(expiry_reminder_sent_at=now)
            if not claimed:
                continue
            method = PaymentMethod.objects.select_related("organisation").get(pk=pk)
            email_send(
                template="card_expiring",
                to=billing_recipients(organisation=method.organisation),
                context={
                    "card": method,
                    "payment_method_url": absolute_url(
                        "billing:payment_method", method.organisation.slug
                    ),
                },
                organisation=method.organisation,
            )
            sent += 1
    return sent


# Payments -------------------------------------------------------------------------------------


def _claim_card_attempt(invoice: Invoice, *, now: datetime) -> Payment | None:
    """Create (or reuse a stale pending) payment attempt for an open card invoice."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.status != Invoice.Status.OPEN:
            raise ServiceError(
                f"Invoice {invoice.number} is {invoice.get_status_display().lower()}."
            )
        pending = invoice.payments.filter(status=Payment.Status.PENDING).first()
        if pending is not None:
            if pending.created_at > now - PENDING_RETRY_AFTER:
                return None  # someone is charging it right now
            return pending  # outcome unknown: retry with the same idempotency key
        method = PaymentMethod.objects.filter(
            organisation_id=invoice.organisation_id, status=PaymentMethod.Status.ACTIVE
        ).first()
        payment = card_attempt_add(
            invoice=invoice, payment_method=method, amount=invoice.amount_due, now=now
        )
        if method is None:
            _record_failure(payment, code="no_card", message="There is no card on file.", now=now)
        return payment


def card_attempt_add(
    *,
    invoice: Invoice,
    payment_method: PaymentMethod | None,
    amount: int,
    now: datetime,
    idempotency_key: str = "",
    **fields,
) -> Payment:
    """The invoice's next card attempt row (caller's transaction, invoice locked).

    Its idempotency key comes from our own row, `invoice-<public id>-attempt-<n>`, unless the
    caller has one (a charge that already ran, recorded by reconciliation).
    """
    attempt = (invoice.payments.aggregate(n=Max("attempt"))["n"] or 0) + 1
    return Payment.objects.create(
        organisation_id=invoice.organisation_id,
        invoice=invoice,
        method_kind=PaymentMethodKind.CARD,
        payment_method=payment_method,
        attempt=attempt,
        amount=amount,
        currency=invoice.currency,
        idempotency_key=idempotency_key or f"invoice-{invoice.public_id}-attempt-{attempt}",
        created_at=now,
        **fields,
    )


def invoice_charge(
    *, invoice: Invoice, now: datetime, notify_failure: bool = True
) -> Payment | None:
    """Charge an open invoice to the card on file, off-session. Returns the attempt.

    The attempt row is committed before Stripe is called and its key is sent with the charge;
    an unanswered call leaves it pending, to be retried later with the same key.
    """
    payment = _claim_card_attempt(invoice, now=now)
    if payment is None or payment.status != Payment.Status.PENDING:
        return payment
    customer_id = BillingProfile.objects.get(
        organisation_id=payment.organisation_id
    ).stripe_customer_id
    try:
        result = gateway.charge(
            customer_id=customer_id,
            payment_method_id=payment.payment_method.stripe_payment_method_id,
            amount=payment.amount,
            currency=payment.currency,
            idempotency_key=payment.idempotency_key,
            description=f"Invoice {payment.invoice.number}",
            metadata={"invoice": payment.invoice.number, "payment": str(payment.pk)},
        )
    except gateway.GatewayUnavailable as error:
        logger.warning(
            "Charge of %s not answered (%s); will retry",
            payment.invoice.number,
            error,
            extra={"organisation_id": payment.organisation_id, "invoice_id": payment.invoice_id},
        )
        return payment
    except gateway.PaymentError as error:
        with transaction.atomic():
            payment = Payment.objects.select_for_update().get(pk=payment.pk)
            payment_failed(
                payment=payment,
                code=error.code or "declined",
                message=error.message,
                now=now,
                notify=notify_failure,
            )
        return payment
    return payment_succeeded(payment=payment, processor_id=result.payment_intent_id, now=now)


def payment_failed(
    *, payment: Payment, code: str, message: str, now: datetime, notify: bool = True
) -> None:
    """A charge was declined (told by the charge call or later by a webhook); caller's
    transaction, payment row locked.

    A declined upgrade voids its invoice (the old plan stays); any other invoice starts the
    failed-payment schedule (day 0; nothing new when a case is already open). An invoice paid
    or voided meanwhile owes nothing: the attempt is recorded, quietly.
    """
    invoice = Invoice.objects.select_for_update().get(pk=payment.invoice_id)
    if invoice.status != Invoice.Status.OPEN:
        _record_failure(payment, code=code, message=message, now=now, notify=False)
        return
    upgrade = invoice.kind == Invoice.Kind.UPGRADE
    # The Admin on the upgrade page sees the message; dunning steps send their own emails.
    _record_failure(payment, code=code, message=message, now=now, notify=notify and not upgrade)
    if upgrade:
        _upgrade_declined(invoice, now=now)
    elif invoice.subscription_id:
        from billing.dunning import dunning_open

        dunning_open(
            subscription=invoice.subscription, started_at=now, now=now, result=message, attempts=1
        )


def _record_failure(
    payment: Payment, *, code: str, message: str, now: datetime, notify: bool = True
) -> None:
    if payment.status != Payment.Status.PENDING:
        return
    payment.status = Payment.Status.FAILED
    payment.failure_code = code[:64]
    payment.failure_message = message[:255]
    payment.completed_at = now
    payment.save(update_fields=["status", "failure_code", "failure_message", "completed_at"])
    if not notify:
        return
    invoice = payment.invoice
    email_send(
        template="payment_failed",
        to=billing_recipients(organisation=invoice.organisation),
        context={
            "invoice": invoice,
            "payment": payment,
            "payment_method_url": absolute_url("billing:payment_method", invoice.organisation.slug),
        },
        organisation=invoice.organisation,
    )


def payment_succeeded(*, payment: Payment, processor_id: str, now: datetime) -> Payment:
    """Record a successful payment: the invoice is paid, a first payment activates the
    subscription, and a receipt is emailed. Recording the same success twice changes nothing."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().select_related("invoice").get(pk=payment.pk)
        if payment.status == Payment.Status.SUCCEEDED:
            return payment
        invoice = Invoice.objects.select_for_update().get(pk=payment.invoice_id)
        if invoice.status != Invoice.Status.OPEN:
            # Money arrived for an invoice already settled another way: never a second success
            # on one invoice; ops see it in the logs and refund it.
            logger.error(
                "Payment %s succeeded but invoice %s is %s: needs review (refund)",
                payment.pk,
                invoice.number,
                invoice.status,
                extra={"organisation_id": invoice.organisation_id, "invoice_id": invoice.pk},
            )
            return payment
        payment.status = Payment.Status.SUCCEEDED
        payment.processor_id = processor_id or payment.processor_id
        payment.completed_at = now
        payment.failure_code = ""
        payment.failure_message = ""
        payment.save(
            update_fields=[
                "status",
                "processor_id",
                "completed_at",
                "failure_code",
                "failure_message",
            ]
        )
        invoice.amount_paid = invoice.total
        invoice.status = Invoice.Status.PAID
        invoice.paid_at = now
        invoice.closed_at = now
        invoice.save(update_fields=["amount_paid", "status", "paid_at", "closed_at"])
        if invoice.kind == Invoice.Kind.UPGRADE:
            _upgrade_apply(invoice, now=now)
        if invoice.subscription_id:
            subscription = Subscription.objects.select_for_update().get(pk=invoice.subscription_id)
            if subscription.status == Subscription.Status.INCOMPLETE:
                subscription_transition(
                    subscription=subscription, to=Subscription.Status.ACTIVE, now=now
                )
            else:
                from billing.dunning import dunning_resolve_if_paid

                # Paid up: close the failed-payment case, restore the service (article 6).
                dunning_resolve_if_paid(subscription=subscription, now=now)
        email_send(
            template="payment_receipt",
            to=billing_recipients(organisation=invoice.organisation),
            context={"invoice": invoice, "payment": payment, "invoice_url": _invoice_url(invoice)},
            organisation=invoice.organisation,
        )
    return payment


def payment_record_manual(
    *, invoice: Invoice, actor: Actor, reference: str, now: datetime, reason: str = ""
) -> Payment:
    """Ops record a bank transfer or purchase-order payment received for an invoice.
    `reason` (why ops did it) goes into the audit log."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.status != Invoice.Status.OPEN:
            raise ServiceError(
                f"Invoice {invoice.number} is {invoice.get_status_display().lower()}."
            )
        attempt = (invoice.payments.aggregate(n=Max("attempt"))["n"] or 0) + 1
        payment = Payment.objects.create(
            organisation_id=invoice.organisation_id,
            invoice=invoice,
            method_kind=invoice.payment_method_kind,
            attempt=attempt,
            amount=invoice.amount_due,
            currency=invoice.currency,
            idempotency_key=f"invoice-{invoice.public_id}-manual-{attempt}",
            reference=reference[:120],
            recorded_by=actor.user,
            created_at=now,
        )
        payment = payment_succeeded(payment=payment, processor_id="", now=now)
        audit_record(
            organisation=invoice.organisation,
            actor=actor,
            action="billing.payment_recorded",
            target=invoice,
            target_label=invoice.number,
            changes={
                "status": {"old": "open", "new": "paid"},
                "reference": {"old": None, "new": reference},
                **reason_change(reason),
            },
            now=now,
        )
    return payment


def invoices_charge_due(*, now: datetime, limit: int = 500) -> int:
    """Charge open card invoices never attempted, and retry unanswered attempts (a job).

    A checkout's first invoice (subscription still incomplete) is charged only when the
    customer pays; an answer lost on that charge is learnt here, with the same key.
    """
    never_tried = ~Exists(Payment.objects.filter(invoice=OuterRef("pk")))
    stale = Exists(
        Payment.objects.filter(
            invoice=OuterRef("pk"),
            status=Payment.Status.PENDING,
            created_at__lte=now - PENDING_RETRY_AFTER,
        )
    )
    due = (
        Invoice.objects.filter(
            status=Invoice.Status.OPEN, payment_method_kind=PaymentMethodKind.CARD
        )
        .filter(
            (Q(never_tried) & ~Q(subscription__status=Subscription.Status.INCOMPLETE)) | Q(stale)
        )
        .order_by("issued_at", "pk")[:limit]
    )
    charged = unanswered = 0
    for invoice in list(due):
        with log_context(organisation_id=invoice.organisation_id, invoice_id=invoice.pk):
            try:
                payment = invoice_charge(invoice=invoice, now=now)
            except ServiceError:
                continue  # paid or voided meanwhile
            except Exception:
                # An unexpected error on one invoice must not hold back the others' charges.
                logger.exception("Could not charge invoice %s", invoice.number)
                continue
        if payment is not None and payment.status == Payment.Status.SUCCEEDED:
            charged += 1
        if payment is not None and payment.status == Payment.Status.PENDING:
            unanswered += 1
            if unanswered >= UNANSWERED_CHARGES_STOP:
                # The processor is down or slow: every further charge would wait a whole
                # timeout. The rest (and these, with their keys) go in the next run.
                logger.warning(
                    "Stopped charging after %s unanswered charges; the next run goes on",
                    unanswered,
                )
                break
    return charged


# Upgrades --------------------------------------------------------------------------------------


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

    @property
    def total(self) -> int:
        return self.subtotal + self.tax_amount


class QuoteChanged(ServiceError):
    """The amount moved between the quote shown and the confirmation: show the new one."""

    def __init__(self, quote: UpgradeQuote, *, shown: int):
        super().__init__(
            "The amount changed since the quote was shown, because less of your billing period "
            "is left. Please check the new amount and confirm again.",
            code="quote_changed",
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
            code="suspended",
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
    from billing.proration import prorate

    _check_upgrade(subscription, plan)
    # Between the end of a period and the billing run that renews it, the period left is
    # nothing: the upgrade would be free. It waits for the renewal (minutes at most).
    if subscription.current_period_end <= now:
        raise ServiceError(
            "Your renewal is being processed right now. Upgrade in a few minutes, once the new "
            "period has started.",
            code="renewal_pending",
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
            code="renewal_pending",
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
    )


def subscription_upgrade(
    *, organisation: Organisation, actor: Actor, plan: Plan, quoted_total: int, now: datetime
) -> Invoice:
    """Upgrade Plan (article section 3): one invoice for the prorated difference, to be charged
    at once by the caller; the new plan applies only when that charge succeeds.

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
        profile = BillingProfile.objects.filter(organisation=organisation).first()
        invoice = Invoice(
            organisation=organisation,
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
            plan_name=plan.name,
            billing_cycle=subscription.billing_cycle,
            period_start=now,
            period_end=subscription.current_period_end,
            billing_details=billing_details_snapshot(organisation=organisation, profile=profile),
            payment_method_kind=PaymentMethodKind.CARD,
            issued_at=now,
            due_at=now,
        )
        line = InvoiceLine(
            position=1,
            kind=InvoiceLine.Kind.PRORATION,
            description=(
                f"Upgrade from {subscription.plan.name} to {plan.name}, "
                "prorated for the rest of the billing period"
            ),
            quantity=1,
            unit_amount=quote.subtotal,
            amount=quote.subtotal,
            period_start=now,
            period_end=subscription.current_period_end,
        )
        [invoice] = _save_drafts([_Draft(invoice=invoice, lines=[line])], now=now)
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
        _after_issue([invoice])
    return invoice


def _upgrade_apply(invoice: Invoice, *, now: datetime) -> None:
    """The upgrade invoice is paid: the new plan and its limits apply now (caller's transaction).

    A downgrade scheduled for the renewal is cancelled: the customer chose a bigger plan since.
    """
    change = PlanChange.objects.select_for_update().get(pk=invoice.plan_change_id)
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


def _upgrade_declined(invoice: Invoice, *, now: datetime) -> None:
    """A declined upgrade leaves the old plan: its invoice is voided, nothing is owed."""
    Invoice.objects.filter(pk=invoice.pk, status=Invoice.Status.OPEN).update(
        status=Invoice.Status.VOID, closed_at=now
    )
    PlanChange.objects.filter(pk=invoice.plan_change_id, status=PlanChange.Status.PENDING).update(
        status=PlanChange.Status.FAILED, closed_at=now
    )
