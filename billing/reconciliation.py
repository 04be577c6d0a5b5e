"""Reconciliation with Stripe: do our card payments and the processor's
PaymentIntents agree?

The `reconcile_stripe` job compares, once a day, the PaymentIntents created in the last
RECONCILIATION_DAYS days with our card payments of the same days:

- missing_here: Stripe has a succeeded charge that we have not recorded as a succeeded payment
  (our request timed out and nothing settled it, or someone charged the card behind our back).
  One refunded in full is settled: the money went back.
- double_charge: the same, for an invoice already paid: the customer paid twice. Also opened
  at once where a success arrives for a paid invoice (billing.payments, billing.webhooks).
- missing_at_processor: we recorded a card payment as succeeded and Stripe has no succeeded
  PaymentIntent for it.
- amount_mismatch: both have it, for different amounts or currencies.

It also records the refunds made at Stripe (in its dashboard) that the `charge.refunded`
webhook did not bring, through billing.stripe_refunds, the same service as the webhook: a
credit note "refunded in Stripe", or refund_unmatched when none can record it. Stripe is
asked for a PaymentIntent's refunds only when what it refunded differs from our refunds.

A PaymentIntent is matched to our payment by its id (Payment.processor_id), else by the
idempotency key or payment id `gateway.charge` put in its metadata. Manual payments (bank
transfer, purchase order, and those ops record on card invoices) are not Stripe's business.
Only what has settled is compared: PaymentIntents and payments younger than SETTLE_AFTER may
still be in flight (a webhook on its way, the charge job retrying an unanswered attempt).

Each difference is one open row (billing.differences), unique per (kind, PaymentIntent id,
payment), or per Stripe id for a double charge and an unmatched refund: a rerun moves its
last_seen_at; one that no longer differs (the webhook came, ops refunded the charge) is
closed with no_action and a note. A difference a person resolved is never reopened.

Ops resolve differences through our services (Django admin > Reconciliation differences),
never by editing rows: record the payment (`payment_succeeded`, as a successful charge does),
mark our payment failed (`payment_failed`, as a declined charge does: the invoice is open
again and dunning applies), refund a double charge (a credit note and a Stripe refund with
our key), or dismiss. Each asks a reason, locks the rows, writes the audit log and changes
nothing the second time.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum

from accounts.audit import Actor, audit_record, reason_change
from billing import gateway
from billing.credit_notes import refund_send
from billing.differences import difference_close, difference_key, difference_open, our_side
from billing.gateway import ProcessorCharge
from billing.models import (
    BillingProfile,
    CreditNote,
    Invoice,
    Payment,
    PaymentMethod,
    ReconciliationDifference,
    Refund,
)
from billing.payments import MANUAL_KEY, card_attempt_add, payment_failed, payment_succeeded
from billing.stripe_refunds import RefundedCharge, second_charge_refund_add, stripe_refund_record
from core.errors import ServiceError
from core.money import format_money
from subscriptions.models import PaymentMethodKind

logger = logging.getLogger(__name__)

Kind = ReconciliationDifference.Kind
Resolution = ReconciliationDifference.Resolution

DEFAULT_DAYS = 3
# Covers the charge job's retry of an unanswered attempt (every 15 minutes, after 2) and
# Stripe's webhook delivery: younger disagreements usually settle by themselves.
SETTLE_AFTER = timedelta(minutes=30)

_SUCCEEDED = "succeeded"
# Our payment statuses whose PaymentIntent Stripe has as succeeded.
_RECORDED_AT_STRIPE = (Payment.Status.SUCCEEDED, Payment.Status.CHARGED_BACK)
_IN_FLIGHT = frozenset({"processing", "requires_capture"})
FAILURE_CODE = "not_at_processor"
FAILURE_MESSAGE = "Our card processor has no record of this payment."


@dataclass(frozen=True)
class ReconcileResult:
    new: int  # differences opened by this run
    still_open: int  # found again
    closed: int  # no longer differ
    refunds_recorded: int = 0  # refunds made at Stripe, recorded as credit notes by this run

    def __str__(self) -> str:
        text = f"{self.new} new, {self.still_open} still open, {self.closed} closed difference(s)"
        if self.refunds_recorded:
            text += f", {self.refunds_recorded} refund(s) made at Stripe recorded"
        return text


@dataclass(frozen=True)
class _Finding:
    kind: str
    organisation_id: int
    payment: Payment | None
    invoice: Invoice | None
    processor_id: str
    ours: dict
    theirs: dict

    @property
    def key(self) -> tuple[str, str, int | None]:
        return _key(self.kind, self.processor_id, self.payment.pk if self.payment else None)


def _key(kind: str, processor_id: str, payment_id: int | None) -> tuple[str, str, int | None]:
    return difference_key(kind, processor_id, payment_id)


# Finding differences ---------------------------------------------------------------------------


def reconcile(*, now: datetime, days: int | None = None) -> ReconcileResult:
    """Compare our card payments with Stripe's PaymentIntents of the last `days` days
    (default: settings.RECONCILIATION_DAYS) and record the differences; record the refunds
    made at Stripe that we have not (billing.stripe_refunds).

    Safe to run twice or concurrently: a difference is one open row, found again it only
    moves last_seen_at; a refund is recorded once. Stripe is asked first, outside the
    transactions; if it cannot be asked (GatewayUnavailable) nothing is recorded or closed.
    """
    days = _days(days)
    since = now - timedelta(days=days)
    settled = now - SETTLE_AFTER
    charges = gateway.payment_intents_since(created_after=since, created_before=now)
    listed = {charge.payment_intent_id: charge for charge in charges}
    refunds = _refunds_to_record(listed)
    findings, seen_charges, seen_payments = _compare_window(
        charges, listed, since=since, settled=settled
    )

    # Differences still open that this run did not compare (older than the window, or the
    # payment changed since): look at both sides again, so none closes merely for its age.
    # Unmatched refunds are looked at again with the refunds.
    still_open = list(
        ReconciliationDifference.objects.filter(resolved_at__isnull=True)
        .exclude(kind=Kind.REFUND_UNMATCHED)
        .select_related("payment__invoice")
    )
    for difference in still_open:
        if difference.processor_id:
            compared = difference.processor_id in seen_charges
        else:
            compared = difference.payment_id in seen_payments
        if not compared and _difference_key(difference) not in findings:
            finding = _recheck(difference, listed)
            if finding is not None:
                findings[finding.key] = finding

    recorded = [
        stripe_refund_record(refund=refund, charge=charge, now=now) for charge, refund in refunds
    ]
    with transaction.atomic():
        outcomes = [_record(findings[key], now=now) for key in sorted(findings, key=_order)]
        closed = _close_agreed(
            [d.pk for d in still_open if _difference_key(d) not in findings], now=now
        )
    outcomes += [r.difference for r in recorded if r.difference]
    result = ReconcileResult(
        new=outcomes.count("new"),
        still_open=outcomes.count("seen"),
        closed=closed + sum(r.closed for r in recorded),
        refunds_recorded=sum(r.credit_note is not None for r in recorded),
    )
    logger.info("Reconciliation with Stripe over %s day(s): %s", days, result)
    return result


def _refunds_to_record(
    listed: dict[str, ProcessorCharge],
) -> list[tuple[RefundedCharge, gateway.ProcessorRefund]]:
    """The refunds of the listed charges of our customers, and of the charges of the refunds
    still waiting for ops, each with its charge. Stripe is asked for the refunds of a
    PaymentIntent only when what it refunded differs from our refunds of it (succeeded or
    under way), so a day without refunds asks nothing more."""
    ours = dict(
        Refund.objects.filter(
            payment_intent_id__in=list(listed),
            status__in=(Refund.Status.SUCCEEDED, Refund.Status.PENDING),
        )
        .values("payment_intent_id")
        .annotate(total=Sum("amount"))
        .values_list("payment_intent_id", "total")
    )
    customers = set(
        BillingProfile.objects.filter(
            stripe_customer_id__in={c.customer_id for c in listed.values() if c.customer_id}
        ).values_list("stripe_customer_id", flat=True)
    )
    to_ask = {
        pi: charge
        for pi, charge in listed.items()
        if charge.customer_id in customers and charge.amount_refunded != ours.get(pi, 0)
    }
    for difference in ReconciliationDifference.objects.filter(
        kind=Kind.REFUND_UNMATCHED, resolved_at__isnull=True
    ).order_by("pk"):
        pi = difference.theirs.get("payment_intent", "")
        if pi and pi not in to_ask:
            charge = listed.get(pi) or gateway.payment_intent_get(payment_intent_id=pi)
            if charge is not None:
                to_ask[pi] = charge
    found = []
    for pi, charge in to_ask.items():
        refunded = RefundedCharge(
            payment_intent_id=pi,
            customer_id=charge.customer_id,
            amount=charge.amount,
            amount_refunded=charge.amount_refunded,
            currency=charge.currency,
        )
        found += [(refunded, refund) for refund in gateway.refunds_of(payment_intent_id=pi)]
    return found


def _compare_window(
    charges: list[ProcessorCharge],
    listed: dict[str, ProcessorCharge],
    *,
    since: datetime,
    settled: datetime,
) -> tuple[dict[tuple, _Finding], set[str], set[int]]:
    """Both sides of the window, each settled item against its counterpart: the findings by
    key, and the PaymentIntents and payments this compared."""
    ours = _OurSide(charges)
    findings: dict[tuple, _Finding] = {}
    seen_charges: set[str] = set()
    seen_payments: set[int] = set()

    def found(finding: _Finding | None) -> None:
        if finding is not None:
            findings[finding.key] = finding

    # Stripe's side: each settled PaymentIntent against the payment it is for.
    answered: set[int] = set()
    for charge in charges:
        payment = ours.payment_for(charge)
        if payment is not None:
            answered.add(payment.pk)  # it has a PaymentIntent, even one still in flight
        if charge.created > settled:
            continue
        seen_charges.add(charge.payment_intent_id)
        if payment is not None:
            seen_payments.add(payment.pk)
        found(_compare(charge, payment, ours))

    # Our side: settled card successes that no listed PaymentIntent answered.
    for payment in _card_successes(since=since, until=settled).exclude(pk__in=answered):
        charge = _charge_of(payment, listed)
        seen_payments.add(payment.pk)
        seen_charges.add(charge.payment_intent_id if charge is not None else payment.processor_id)
        found(_compare(charge, payment, ours))
    return findings, seen_charges, seen_payments


def _days(days: int | None) -> int:
    if days is None:
        days = getattr(settings, "RECONCILIATION_DAYS", DEFAULT_DAYS)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"Reconciliation needs a whole number of days, at least 1: {days!r}.")
    return days


def _order(key: tuple) -> tuple:
    kind, processor_id, payment_id = key
    return (kind, processor_id, payment_id or 0)


def _difference_key(difference: ReconciliationDifference) -> tuple:
    return _key(difference.kind, difference.processor_id, difference.payment_id)


def _is_card(payment: Payment) -> bool:
    return (
        payment.method_kind == PaymentMethodKind.CARD and MANUAL_KEY not in payment.idempotency_key
    )


def _card_successes(*, since: datetime, until: datetime):
    return (
        Payment.objects.filter(
            method_kind=PaymentMethodKind.CARD,
            status=Payment.Status.SUCCEEDED,
            created_at__gte=since,
            created_at__lte=until,
        )
        .exclude(idempotency_key__contains=MANUAL_KEY)
        .select_related("invoice")
        .order_by("pk")
    )


class _OurSide:
    """Our rows that a set of PaymentIntents can point at, loaded in a few queries."""

    def __init__(self, charges: list[ProcessorCharge]) -> None:
        customers = {charge.customer_id for charge in charges if charge.customer_id}
        self.organisations = dict(
            BillingProfile.objects.filter(stripe_customer_id__in=customers).values_list(
                "stripe_customer_id", "organisation_id"
            )
        )
        match = Q(processor_id__in=[charge.payment_intent_id for charge in charges])
        keys = [charge.metadata.get("idempotency_key") for charge in charges]
        match |= Q(idempotency_key__in=[key for key in keys if key])
        ids = [charge.metadata.get("payment", "") for charge in charges]
        match |= Q(pk__in=[int(pk) for pk in ids if pk.isdigit() and len(pk) < 18])
        self.payments = [
            payment
            for payment in Payment.objects.filter(match).select_related("invoice").order_by("pk")
            if _is_card(payment)
        ]
        numbers = {charge.metadata.get("invoice") for charge in charges} - {None, ""}
        self.invoices = {
            (invoice.organisation_id, invoice.number): invoice
            for invoice in Invoice.objects.filter(
                number__in=numbers, organisation_id__in=set(self.organisations.values())
            )
        }

    def organisation_of(self, charge: ProcessorCharge) -> int | None:
        return self.organisations.get(charge.customer_id)

    def payment_for(self, charge: ProcessorCharge) -> Payment | None:
        """Our card payment for the PaymentIntent: by its id, else by our key or payment id
        in its metadata (an attempt whose answer we never got has no id on our side)."""
        for payment in self.payments:
            if payment.processor_id == charge.payment_intent_id:
                return payment
        key = charge.metadata.get("idempotency_key")
        payment_id = charge.metadata.get("payment")
        organisation_id = self.organisation_of(charge)
        for payment in self.payments:
            if payment.processor_id not in ("", charge.payment_intent_id):
                continue  # paid by another PaymentIntent: this one is a second charge
            if key and payment.idempotency_key == key:
                return payment
            # A bare payment id is easy to copy: only for the same organisation's customer.
            if payment_id == str(payment.pk) and payment.organisation_id == organisation_id:
                return payment
        return None

    def invoice_named(self, charge: ProcessorCharge, organisation_id: int) -> Invoice | None:
        return self.invoices.get((organisation_id, charge.metadata.get("invoice", "")))


def _charge_of(payment: Payment, listed: dict[str, ProcessorCharge]) -> ProcessorCharge | None:
    """The PaymentIntent of one of our payments, asked of Stripe when it was not listed."""
    if payment.processor_id:
        return listed.get(payment.processor_id) or gateway.payment_intent_get(
            payment_intent_id=payment.processor_id
        )
    for charge in listed.values():
        if charge.metadata.get("idempotency_key") == payment.idempotency_key:
            return charge
    customer_id = (
        BillingProfile.objects.filter(organisation_id=payment.organisation_id)
        .values_list("stripe_customer_id", flat=True)
        .first()
    )
    if not customer_id:
        return None
    return gateway.payment_intent_with_key(
        customer_id=customer_id, idempotency_key=payment.idempotency_key
    )


def _recheck(
    difference: ReconciliationDifference, listed: dict[str, ProcessorCharge]
) -> _Finding | None:
    """Compare a difference's two sides as they are now, wherever they are in time."""
    charge = None
    if difference.processor_id:
        charge = listed.get(difference.processor_id) or gateway.payment_intent_get(
            payment_intent_id=difference.processor_id
        )
    ours = _OurSide([charge] if charge is not None else [])
    if charge is not None:
        # Paired afresh: the payment it was found with may have been paid by another since.
        payment = ours.payment_for(charge)
    else:
        payment = Payment.objects.select_related("invoice").filter(pk=difference.payment_id).first()
        if payment is not None and not difference.processor_id:
            charge = _charge_of(payment, listed)
    return _compare(charge, payment, ours)


def _compare(
    charge: ProcessorCharge | None, payment: Payment | None, ours: _OurSide
) -> _Finding | None:
    """The difference between a PaymentIntent and our payment for it (either may be None)."""
    charged = charge is not None and charge.status == _SUCCEEDED
    # A charged-back payment (a lost dispute, billing.disputes) is still a succeeded charge at
    # Stripe: the money came and went back through the dispute, not a missing payment.
    recorded = payment is not None and payment.status in _RECORDED_AT_STRIPE
    if charged and recorded:
        if (charge.amount, charge.currency.upper()) == (payment.amount, payment.currency.upper()):
            return None
        kind = Kind.AMOUNT_MISMATCH
    elif charged:
        if charge.amount_refunded >= charge.amount:
            return None  # refunded in full: nothing was kept
        kind = Kind.MISSING_HERE
    elif recorded:
        if charge is not None and charge.status in _IN_FLIGHT:
            return None
        kind = Kind.MISSING_AT_PROCESSOR
    else:
        return None
    if payment is not None:
        organisation_id, invoice = payment.organisation_id, payment.invoice
    else:
        organisation_id = ours.organisation_of(charge)
        if organisation_id is None:
            # Not one of our customers and none of our keys: another product's charge on the
            # same Stripe account is not ours to reconcile.
            return None
        invoice = ours.invoice_named(charge, organisation_id)
    if kind == Kind.MISSING_HERE and invoice is not None and invoice.status == Invoice.Status.PAID:
        # Nothing was owed any more: the customer paid twice, ops refund this charge.
        kind = Kind.DOUBLE_CHARGE
    processor_id = charge.payment_intent_id if charge is not None else payment.processor_id
    return _Finding(
        kind=kind,
        organisation_id=organisation_id,
        payment=payment,
        invoice=invoice,
        processor_id=processor_id,
        ours=our_side(payment, invoice),
        theirs=_their_side(charge, processor_id),
    )


def _their_side(charge: ProcessorCharge | None, processor_id: str) -> dict:
    if charge is None:
        return {"payment_intent": processor_id, "status": "not found at Stripe"}
    return {
        "payment_intent": charge.payment_intent_id,
        "status": charge.status,
        "amount": charge.amount,
        "currency": charge.currency.upper(),
        "amount_refunded": charge.amount_refunded,
        "created": charge.created.isoformat(),
        "customer": charge.customer_id,
        "invoice": charge.metadata.get("invoice", ""),
        "payment": charge.metadata.get("payment", ""),
        "idempotency_key": charge.metadata.get("idempotency_key", ""),
        "description": charge.description,
    }


def _record(finding: _Finding, *, now: datetime) -> str:
    """Open the difference, or note it was seen again (caller's transaction): new, seen, decided."""
    return difference_open(
        kind=finding.kind,
        processor_id=finding.processor_id,
        organisation_id=finding.organisation_id,
        payment=finding.payment,
        invoice=finding.invoice,
        ours=finding.ours,
        theirs=finding.theirs,
        now=now,
    )


def _close_agreed(ids: list[int], *, now: datetime) -> int:
    """Close the open differences a run no longer found (caller's transaction)."""
    closed = 0
    for difference in (
        ReconciliationDifference.objects.select_for_update()
        .filter(pk__in=ids, resolved_at__isnull=True)
        .order_by("pk")
    ):
        difference_close(
            difference,
            note=f"Closed automatically: on {now:%Y-%m-%d %H:%M} UTC our payment and Stripe "
            "agreed (the outcome was recorded meanwhile, or the charge was refunded).",
            now=now,
        )
        closed += 1
    return closed


# Resolving differences -------------------------------------------------------------------------


def difference_resolve_record_payment(
    *, difference: ReconciliationDifference, actor: Actor, reason: str, now: datetime
) -> Payment:
    """Stripe charged and we did not record it: record the payment on the invoice the charge's
    metadata names, through `payment_succeeded` as a successful charge (receipt, dunning
    resolved, subscription activated).

    Refused, recording nothing, when the invoice is already paid or closed (then the charge
    is a double charge: refund it in Stripe), when the amounts differ, or when Stripe no
    longer has it as a succeeded charge. Stripe is asked again first.
    """
    reason = _reason(reason, actor)
    _still_open(difference, Kind.MISSING_HERE)
    pi = difference.processor_id
    charge = _ask_stripe(lambda: gateway.payment_intent_get(payment_intent_id=pi))
    with transaction.atomic():
        difference = _locked_open(difference, Kind.MISSING_HERE)
        _refuse_unless_charge_kept(charge, pi)
        money = format_money(charge.amount, charge.currency)
        payment = _locked_unrecorded_payment(difference)
        invoice_id = payment.invoice_id if payment is not None else difference.invoice_id
        if invoice_id is None:
            raise ServiceError(
                f"The charge {pi} ({money}) names no invoice of this organisation in its "
                "metadata: nothing was recorded. Find out what it was for; refund it in Stripe "
                "if it was a mistake, then dismiss the difference."
            )
        invoice = _locked_invoice_owing(invoice_id, pi=pi, money=money)
        due = invoice.amount_due if payment is None else payment.amount
        if (charge.amount, charge.currency.upper()) != (due, invoice.currency.upper()):
            raise ServiceError(
                f"Stripe charged {money} ({pi}) but {format_money(due, invoice.currency)} is "
                f"due on invoice {invoice.number}: nothing was recorded. Refund the charge in "
                "Stripe; the invoice is then charged again as usual."
            )
        earlier = None if payment is None else payment.status
        if payment is None:
            payment = _charge_attempt(invoice, charge, difference=difference, actor=actor, now=now)
        payment = payment_succeeded(payment=payment, processor_id=pi, now=now)
        difference.payment = payment
        _resolve(difference, Resolution.PAYMENT_RECORDED, actor=actor, note=reason, now=now)
        _invoice_audit(
            invoice,
            "billing.reconciliation_payment_recorded",
            status=("open", "paid"),
            payment=(earlier, "succeeded"),
            processor_id=(None, pi),
            actor=actor,
            reason=reason,
            now=now,
        )
    return payment


def _refuse_unless_charge_kept(charge: ProcessorCharge | None, pi: str) -> None:
    """Only a charge Stripe still has as succeeded, and not refunded, is recorded."""
    if charge is None or charge.status != _SUCCEEDED:
        status = "not found" if charge is None else charge.status
        raise ServiceError(
            f"Stripe no longer has {pi} as a succeeded charge ({status}): there is nothing "
            "to record. Dismiss the difference once checked."
        )
    if charge.amount_refunded:
        raise ServiceError(
            f"Stripe refunded {format_money(charge.amount_refunded, charge.currency)} of "
            f"{pi} ({format_money(charge.amount, charge.currency)}): nothing was recorded. "
            "Dismiss the difference once checked."
        )


def _locked_unrecorded_payment(difference: ReconciliationDifference) -> Payment | None:
    """The difference's payment, locked, unless it was recorded as succeeded meanwhile."""
    payment = (
        Payment.objects.select_for_update(of=("self",)).get(pk=difference.payment_id)
        if difference.payment_id
        else None
    )
    if payment is not None and payment.status == Payment.Status.SUCCEEDED:
        raise ServiceError(
            f"Payment {payment.pk} was recorded as succeeded meanwhile: nothing changed. "
            "The next reconciliation closes this difference if both sides agree."
        )
    return payment


def _locked_invoice_owing(invoice_id: int, *, pi: str, money: str) -> Invoice:
    """The invoice the charge pays, locked, refused unless it is open (something is owed)."""
    invoice = (
        Invoice.objects.select_for_update(of=("self",))
        .select_related("organisation")
        .get(pk=invoice_id)
    )
    if invoice.status == Invoice.Status.PAID:
        raise ServiceError(
            f"Invoice {invoice.number} is already paid, so {pi} ({money}) is a double "
            'charge: nothing was recorded. The next reconciliation reports it as "Charged '
            'twice", to refund with "Refund this charge".'
        )
    if invoice.status != Invoice.Status.OPEN:
        raise ServiceError(
            f"Invoice {invoice.number} is {invoice.get_status_display().lower()}: nothing "
            f"is owed on it and nothing was recorded. Refund {pi} ({money}) in Stripe; the "
            "difference then closes by itself."
        )
    return invoice


def _charge_attempt(
    invoice: Invoice,
    charge: ProcessorCharge,
    *,
    difference: ReconciliationDifference,
    actor: Actor,
    now: datetime,
) -> Payment:
    """A card attempt for a charge made without one (caller's transaction, invoice locked)."""
    method = PaymentMethod.objects.filter(
        organisation_id=invoice.organisation_id,
        stripe_payment_method_id=charge.payment_method_id or None,
    ).first()
    return card_attempt_add(
        invoice=invoice,
        payment_method=method,
        amount=charge.amount,
        now=now,
        # Ours, from the difference row: never sent to Stripe, the charge already ran.
        idempotency_key=f"reconciliation-{difference.pk}",
        processor_id=charge.payment_intent_id,
        reference=f"Stripe {charge.payment_intent_id}",
        recorded_by=actor.user,
    )


def difference_resolve_mark_failed(
    *, difference: ReconciliationDifference, actor: Actor, reason: str, now: datetime
) -> Payment:
    """We recorded a card payment Stripe does not have: withdraw the success and fail the
    attempt through `payment_failed`, as a declined charge (the invoice is open again, the
    failed-payment email goes out and dunning starts or continues).

    Refused when Stripe has the PaymentIntent as succeeded after all (Stripe is asked again
    first) and when our payment is no longer a success. An upgrade invoice goes into dunning
    like any other: the new plan, applied on the recorded success, stays.
    """
    reason = _reason(reason, actor)
    _still_open(difference, Kind.MISSING_AT_PROCESSOR)
    charge = _ask_stripe(lambda: _charge_of(difference.payment, {}))
    with transaction.atomic():
        difference = _locked_open(difference, Kind.MISSING_AT_PROCESSOR)
        payment = Payment.objects.select_for_update(of=("self",)).get(pk=difference.payment_id)
        invoice = (
            Invoice.objects.select_for_update(of=("self",))
            .select_related("organisation")
            .get(pk=payment.invoice_id)
        )
        _refuse_unless_success_withdrawable(charge, payment, invoice)
        _withdraw_success(invoice, payment)
        # Then fail the attempt as a declined charge fails (payment_failed only fails a
        # pending attempt): the failed-payment email, then dunning from day 0. An upgrade it
        # had applied stays applied, and its invoice is owed like any other.
        payment_failed(payment=payment, code=FAILURE_CODE, message=FAILURE_MESSAGE, now=now)
        _resolve(difference, Resolution.MARKED_FAILED, actor=actor, note=reason, now=now)
        _invoice_audit(
            invoice,
            "billing.reconciliation_marked_failed",
            status=("paid", "open"),
            payment=("succeeded", "failed"),
            processor_id=(payment.processor_id or None, None),
            actor=actor,
            reason=reason,
            now=now,
        )
    return payment


def _refuse_unless_success_withdrawable(
    charge: ProcessorCharge | None, payment: Payment, invoice: Invoice
) -> None:
    """Only a success Stripe does not have, still recorded."""
    if charge is not None and (charge.status == _SUCCEEDED or charge.status in _IN_FLIGHT):
        raise ServiceError(
            f"Stripe has {charge.payment_intent_id} as {charge.status} "
            f"({format_money(charge.amount, charge.currency)}): the payment is not missing "
            "there, nothing changed."
        )
    if payment.status != Payment.Status.SUCCEEDED or invoice.status != Invoice.Status.PAID:
        raise ServiceError(
            f"Payment {payment.pk} is {payment.status} and invoice {invoice.number} is "
            f"{invoice.get_status_display().lower()}: there is no success to withdraw, "
            "nothing changed."
        )


def _withdraw_success(invoice: Invoice, payment: Payment) -> None:
    """Withdraw the success we recorded: the invoice owes its amount again and the attempt is
    pending (caller's transaction, both rows locked)."""
    invoice.status = Invoice.Status.OPEN
    invoice.amount_paid = max(invoice.amount_paid - payment.amount, 0)
    invoice.paid_at = None
    invoice.closed_at = None
    invoice.save(update_fields=["status", "amount_paid", "paid_at", "closed_at"])
    payment.status = Payment.Status.PENDING
    payment.save(update_fields=["status"])


def difference_resolve_refund(
    *, difference: ReconciliationDifference, actor: Actor, reason: str, now: datetime
) -> CreditNote:
    """ "Refund this charge": a second charge for an invoice already paid goes back to the
    card. A credit note (reason "duplicate", one line for the charge, which credits none of
    the invoice's) and its Refund row with our idempotency key are committed with the
    resolution and the audit row, then Stripe refunds the PaymentIntent in full
    (`credit_notes.refund_send`); unanswered, the charge job sends it again with the same key.

    Refused, with nothing written, when the difference is not an open double charge, and
    when Stripe no longer has the charge as succeeded or refunded some of it already (it is
    asked again first). Twice, the second is refused: the difference is resolved.
    """
    reason = _reason(reason, actor)
    _still_open(difference, Kind.DOUBLE_CHARGE)
    pi = difference.processor_id
    charge = _ask_stripe(lambda: gateway.payment_intent_get(payment_intent_id=pi))
    with transaction.atomic():
        difference = _locked_open(difference, Kind.DOUBLE_CHARGE)
        if charge is None or charge.status != _SUCCEEDED:
            status = "not found" if charge is None else charge.status
            raise ServiceError(
                f"Stripe no longer has {pi} as a succeeded charge ({status}): there is "
                "nothing to refund. Dismiss the difference once checked."
            )
        money = format_money(charge.amount, charge.currency)
        if charge.amount_refunded:
            raise ServiceError(
                f"Stripe already refunded {format_money(charge.amount_refunded, charge.currency)}"
                f" of {pi} ({money}): nothing was refunded here. The difference closes by "
                "itself once the charge is refunded in full; dismiss it otherwise."
            )
        invoice = (
            Invoice.objects.select_for_update(of=("self",))
            .select_related("organisation")
            .get(pk=difference.invoice_id)
        )
        if charge.currency.upper() != invoice.currency.upper():
            raise ServiceError(
                f"{pi} was charged in {charge.currency.upper()} and invoice {invoice.number} "
                f"is in {invoice.currency}: nothing was refunded. Refund it in Stripe, then "
                "dismiss the difference."
            )
        payment = (
            Payment.objects.filter(processor_id=pi).order_by("pk").first() or difference.payment
        )
        refund = second_charge_refund_add(
            invoice=invoice,
            payment=payment,
            payment_intent_id=pi,
            amount=charge.amount,
            actor=actor,
            now=now,
        )
        _resolve(difference, Resolution.REFUNDED, actor=actor, note=reason, now=now)
        _invoice_audit(
            invoice,
            "billing.reconciliation_refunded",
            processor_id=(None, pi),
            refund=(None, money),
            credit_note=(None, refund.credit_note.number),
            actor=actor,
            reason=reason,
            now=now,
        )
    refund_send(refund=refund, now=now)
    credit_note = refund.credit_note
    credit_note.refresh_from_db()
    return credit_note


def difference_dismiss(
    *, difference: ReconciliationDifference, actor: Actor, reason: str, now: datetime
) -> ReconciliationDifference:
    """Ops checked a difference and nothing is to change here (e.g. they refunded a double
    charge, or settled an amount mismatch in Stripe). A dismissed difference never reopens."""
    reason = _reason(reason, actor)
    with transaction.atomic():
        difference = _locked_open(difference, None)
        _resolve(difference, Resolution.NO_ACTION, actor=actor, note=reason, now=now)
        if difference.organisation is not None:
            audit_record(
                organisation=difference.organisation,
                actor=actor,
                action="billing.reconciliation_dismissed",
                target=difference,
                target_label=str(difference),
                changes={"resolution": {"old": None, "new": "no_action"}, **reason_change(reason)},
                now=now,
            )
    return difference


def _invoice_audit(invoice: Invoice, action: str, *, actor, reason, now, **fields) -> None:
    """The audit row of a resolution that changed an invoice: each field as (old, new)."""
    audit_record(
        organisation=invoice.organisation,
        actor=actor,
        action=action,
        target=invoice,
        target_label=invoice.number,
        changes={
            **{name: {"old": old, "new": new} for name, (old, new) in fields.items()},
            **reason_change(reason),
        },
        now=now,
    )


def _reason(reason: str, actor: Actor) -> str:
    if actor.user is None:
        # A person decides: who resolved a difference is what keeps it from reopening.
        raise ServiceError("A difference is resolved by a person, not by the system.")
    reason = (reason or "").strip()
    if not reason:
        raise ServiceError(
            "Give a reason: it is kept in the organisation's audit log.", field="reason"
        )
    return reason[:500]


def _already(difference: ReconciliationDifference) -> ServiceError:
    return ServiceError(
        f"This difference was already resolved on {difference.resolved_at:%Y-%m-%d %H:%M} UTC "
        f"({difference.get_resolution_display().lower()}): nothing changed."
    )


def _still_open(difference: ReconciliationDifference, kind: str) -> None:
    """Refuse early, before asking Stripe; checked again under the row lock."""
    difference = ReconciliationDifference.objects.get(pk=difference.pk)
    if difference.resolved_at is not None:
        raise _already(difference)
    if difference.kind != kind:
        raise ServiceError(
            f'This difference is "{difference.get_kind_display()}"; this action is for '
            f'"{Kind(kind).label}" differences. Nothing changed.'
        )


def _locked_open(difference: ReconciliationDifference, kind: str | None):
    difference = (
        ReconciliationDifference.objects.select_for_update(of=("self",))
        .select_related("organisation")
        .get(pk=difference.pk)
    )
    if difference.resolved_at is not None:
        raise _already(difference)
    if kind is not None and difference.kind != kind:
        raise ServiceError("This difference changed meanwhile. Nothing changed.")
    return difference


def _resolve(
    difference: ReconciliationDifference, resolution: str, *, actor: Actor, note: str, now: datetime
) -> None:
    difference.resolved_at = now
    difference.resolution = resolution
    difference.resolved_by = actor.user
    difference.note = note
    difference.save(update_fields=["resolved_at", "resolution", "resolved_by", "note", "payment"])


def _ask_stripe(ask):
    try:
        return ask()
    except gateway.PaymentError as error:
        raise ServiceError(
            f"Stripe could not be asked, nothing changed. {error.message}"
        ) from error
