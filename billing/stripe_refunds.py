"""Refunds made at Stripe, recorded here as credit notes, and the refund of a second charge
(docs/architecture.md#decision-credit-notes-and-the-customer-balance).

Ops sometimes refund in the Stripe dashboard. Stripe tells us with the `charge.refunded`
webhook (billing.webhooks), and the daily reconciliation finds those the webhook missed
(billing.reconciliation); both record each refund through `stripe_refund_record`:

- our own refund (its metadata carries the idempotency key of our Refund row): that refund
  is done (`credit_notes.refund_succeeded`), never a second credit note;
- a refund of a card payment of ours: a credit note "refunded in Stripe" for its amount,
  split over the invoice's lines and tax in proportion as an amount credit note is, with a
  Refund row holding the Stripe refund's id. That id is unique and the invoice row is locked
  first, so a redelivered event, or the webhook and the reconciliation racing, record it once;
- a refund of a second charge ops have to refund (an open "Charged twice" difference): a
  credit note of that charge, which credits no invoice line; refunded in full, the
  difference is resolved;
- a refund no credit note can record (more than the invoice has left to credit or can give
  back, a charge that is not a payment of ours): a "Refunded at Stripe, no credit note here"
  difference for ops, one per refund. A charge we never recorded that Stripe refunded in
  full needs nothing: no money was kept.

Only succeeded refunds are recorded; one still pending at Stripe is recorded once it has
succeeded (the reconciliation asks again while the amounts differ).

"Refund this charge" (billing.reconciliation.difference_resolve_refund) issues its credit
note and Refund row through `second_charge_refund_add`, then asks Stripe after commit.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from django.db import IntegrityError, transaction

from accounts.audit import SYSTEM, Actor
from billing import credit_notes
from billing.differences import difference_close, difference_open, our_side
from billing.gateway import ProcessorRefund
from billing.models import (
    BillingProfile,
    CreditNote,
    Invoice,
    Payment,
    ReconciliationDifference,
    Refund,
)
from billing.payments import MANUAL_KEY
from core.money import format_money
from subscriptions.models import PaymentMethodKind

logger = logging.getLogger(__name__)

Kind = ReconciliationDifference.Kind
Resolution = ReconciliationDifference.Resolution

_SUCCEEDED = "succeeded"


class RefundOutcome(StrEnum):
    """What recording one Stripe refund did."""

    CREDIT_NOTE_ISSUED = "credit note issued"
    OURS = "our refund, done"
    ALREADY_RECORDED = "already recorded"
    NEEDS_REVIEW = "needs review"  # a "refunded at Stripe, no credit note here" difference
    NOT_SUCCEEDED = "not succeeded yet"
    NOTHING_KEPT = "charge never recorded here, refunded in full"
    NOT_OURS = "not our customer's"


@dataclass(frozen=True)
class RefundedCharge:
    """The charge a refund gave money back from, as Stripe has it."""

    payment_intent_id: str
    customer_id: str
    amount: int  # minor units
    amount_refunded: int  # minor units, every refund of it so far
    currency: str


@dataclass(frozen=True)
class RefundRecorded:
    outcome: RefundOutcome
    credit_note: CreditNote | None = None
    # For a refund needing review: "new" or "seen" (billing.differences.difference_open).
    difference: str = ""
    # Differences recording it closed (an unmatched refund now recorded, a double charge
    # now refunded).
    closed: int = 0

    def __str__(self) -> str:
        if self.credit_note is not None:
            return f"{self.outcome} {self.credit_note.number}"
        return str(self.outcome)


# The webhook ------------------------------------------------------------------------------


def charge_refunded(*, charge: dict[str, Any], now: datetime) -> str:
    """Record the refunds a `charge.refunded` event's Charge lists (caller's transaction: the
    webhook's); the outcome, refund by refund. Events may come late, twice or out of order:
    each refund is recorded by its id, once. Refunds the event does not list (more than one
    page) are left to the reconciliation, as Stripe is never called inside a transaction."""
    intent_id = charge.get("payment_intent")
    if not isinstance(intent_id, str) or not intent_id.startswith("pi_"):
        return "ignored: not the charge of a PaymentIntent"
    try:
        refunded = RefundedCharge(
            payment_intent_id=intent_id,
            customer_id=str(charge.get("customer") or ""),
            amount=int(charge["amount"]),
            amount_refunded=int(charge.get("amount_refunded") or 0),
            currency=str(charge["currency"]).lower(),
        )
    except (KeyError, TypeError, ValueError):
        return "ignored: not a charge"
    listed = charge.get("refunds")
    items = listed.get("data") if isinstance(listed, dict) else None
    if not isinstance(items, list):
        return "refunds not listed: the reconciliation records them"
    outcomes = []
    for item in items:
        refund = _event_refund(item, intent_id)
        if refund is None:
            outcomes.append("ignored: not a refund")
            continue
        recorded = stripe_refund_record(refund=refund, charge=refunded, now=now)
        outcomes.append(f"{refund.refund_id}: {recorded}")
    if listed.get("has_more"):
        outcomes.append("more not listed: the reconciliation records them")
    return "; ".join(outcomes) or "no refunds listed"


def _event_refund(item: Any, intent_id: str) -> ProcessorRefund | None:
    if not isinstance(item, dict):
        return None
    refund_id, metadata = item.get("id"), item.get("metadata") or {}
    if not isinstance(refund_id, str) or not refund_id.startswith("re_"):
        return None
    if not isinstance(metadata, dict):
        return None
    try:
        return ProcessorRefund(
            refund_id=refund_id,
            payment_intent_id=intent_id,
            amount=int(item["amount"]),
            currency=str(item["currency"]).lower(),
            status=str(item["status"]),
            created=datetime.fromtimestamp(int(item["created"]), tz=UTC),
            metadata={str(key): str(value) for key, value in metadata.items()},
        )
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


# Recording one refund --------------------------------------------------------------------------


def stripe_refund_record(
    *, refund: ProcessorRefund, charge: RefundedCharge, now: datetime
) -> RefundRecorded:
    """Record one refund Stripe made of a charge (its own transaction, or the caller's), as
    the module says: ours done, a credit note "refunded in Stripe", or a difference for ops.
    Twice, or by two callers at once, it is recorded once."""
    if refund.status != _SUCCEEDED:
        return RefundRecorded(RefundOutcome.NOT_SUCCEEDED)
    with transaction.atomic():
        ours = _our_refund(refund)
        if ours is not None:
            credit_notes.refund_succeeded(refund=ours, processor_id=refund.refund_id, now=now)
            return RefundRecorded(RefundOutcome.OURS)
        if _recorded(refund):
            return RefundRecorded(RefundOutcome.ALREADY_RECORDED)
        payment = _payment_refunded(charge)
        double = None if payment is not None else _double_charge(charge)
        invoice = None
        if payment is not None or double is not None:
            invoice = (
                Invoice.objects.select_for_update(of=("self",))
                .select_related("organisation")
                .get(pk=payment.invoice_id if payment is not None else double.invoice_id)
            )
            # Whoever held the lock before us may have recorded it.
            if _recorded(refund):
                return RefundRecorded(RefundOutcome.ALREADY_RECORDED)
            problem = _cannot_credit(invoice, refund, second_charge=payment is None)
            if problem is None:
                return _credit_note_record(refund, charge, invoice, payment, double, now=now)
        elif charge.amount_refunded >= charge.amount:
            closed = _unmatched_close(refund, note="its charge was refunded in full", now=now)
            return RefundRecorded(RefundOutcome.NOTHING_KEPT, closed=closed)
        else:
            problem = (
                f"{charge.payment_intent_id} is not a card payment recorded here, so there "
                "is no invoice to credit"
            )
        organisation_id = invoice.organisation_id if invoice else _organisation_of(charge)
        if organisation_id is None:
            return RefundRecorded(RefundOutcome.NOT_OURS)
        found = difference_open(
            kind=Kind.REFUND_UNMATCHED,
            processor_id=refund.refund_id,
            organisation_id=organisation_id,
            payment=payment if payment is not None else (double.payment if double else None),
            invoice=invoice,
            ours=our_side(payment, invoice) | {"problem": problem},
            theirs=_their_refund(refund, charge),
            now=now,
        )
    if found == "new":
        logger.error(
            "Refund %s of %s (%s) made at Stripe is not recorded here: %s",
            refund.refund_id,
            charge.payment_intent_id,
            format_money(refund.amount, refund.currency),
            problem,
            extra={"organisation_id": organisation_id},
        )
    return RefundRecorded(RefundOutcome.NEEDS_REVIEW, difference=found)


def _our_refund(refund: ProcessorRefund) -> Refund | None:
    """Our Refund row the Stripe refund was made for: its key is in the metadata."""
    key = refund.metadata.get("idempotency_key")
    if not key:
        return None
    return Refund.objects.filter(
        idempotency_key=key, payment_intent_id=refund.payment_intent_id
    ).first()


def _recorded(refund: ProcessorRefund) -> bool:
    return Refund.objects.filter(processor_id=refund.refund_id).exists()


def _payment_refunded(charge: RefundedCharge) -> Payment | None:
    """Our successful card payment the charge is, if any."""
    return (
        Payment.objects.filter(
            processor_id=charge.payment_intent_id,
            method_kind=PaymentMethodKind.CARD,
            status=Payment.Status.SUCCEEDED,
        )
        .exclude(idempotency_key__contains=MANUAL_KEY)
        .first()
    )


def _double_charge(charge: RefundedCharge) -> ReconciliationDifference | None:
    """The open "Charged twice" difference of the charge: a second charge ops had to refund."""
    return (
        ReconciliationDifference.objects.filter(
            kind=Kind.DOUBLE_CHARGE,
            processor_id=charge.payment_intent_id,
            resolved_at__isnull=True,
            invoice__isnull=False,
        )
        .select_related("payment")
        .first()
    )


def _organisation_of(charge: RefundedCharge) -> int | None:
    if not charge.customer_id:
        return None
    return (
        BillingProfile.objects.filter(stripe_customer_id=charge.customer_id)
        .values_list("organisation_id", flat=True)
        .first()
    )


def _cannot_credit(invoice: Invoice, refund: ProcessorRefund, *, second_charge: bool) -> str | None:
    """Why no credit note can record the refund on the invoice (locked), or None."""
    money = format_money(refund.amount, refund.currency)
    if refund.currency.upper() != invoice.currency.upper():
        return (
            f"the refund is in {refund.currency.upper()}, invoice {invoice.number} in "
            f"{invoice.currency}"
        )
    if second_charge:
        return None  # a second charge's refund credits no line of the invoice
    if invoice.status == Invoice.Status.VOID:
        return f"invoice {invoice.number} is void"
    if refund.amount > invoice.amount_uncredited:
        left = format_money(invoice.amount_uncredited, invoice.currency)
        return f"{money} is more than the {left} invoice {invoice.number} has left to credit"
    back = credit_notes.money_back_left(invoice)
    if refund.amount > back:
        left = format_money(back, invoice.currency)
        return f"{money} is more than the {left} of invoice {invoice.number} that can go back"
    return None


def _credit_note_record(
    refund: ProcessorRefund,
    charge: RefundedCharge,
    invoice: Invoice,
    payment: Payment | None,
    double: ReconciliationDifference | None,
    *,
    now: datetime,
) -> RefundRecorded:
    """The credit note "refunded in Stripe" and its succeeded Refund row (caller's
    transaction, invoice locked)."""
    if payment is not None:
        credits = credit_notes._credit_amount(
            credit_notes.lines_left(invoice), refund.amount, invoice.currency
        )
    else:
        credits = [_second_charge_credit(charge.payment_intent_id, refund.amount)]
    try:
        with transaction.atomic():  # a savepoint: the unique refund id decides a race
            credit_note = credit_notes._issue(
                invoice,
                [credit for credit in credits if credit.total],
                reason=CreditNote.Reason.REFUNDED_IN_STRIPE,
                outcome=CreditNote.Outcome.REFUNDED_IN_STRIPE,
                note="",
                reference=refund.refund_id,
                actor=SYSTEM,
                now=now,
            )
            Refund.objects.create(
                organisation_id=invoice.organisation_id,
                credit_note=credit_note,
                payment=payment if payment is not None else double.payment,
                payment_intent_id=charge.payment_intent_id,
                amount=refund.amount,
                currency=invoice.currency,
                status=Refund.Status.SUCCEEDED,
                # Never sent to Stripe: the refund was made there already.
                idempotency_key=f"stripe-refund-{refund.refund_id}",
                processor_id=refund.refund_id,
                created_at=refund.created,
                completed_at=now,
            )
    except IntegrityError:
        return RefundRecorded(RefundOutcome.ALREADY_RECORDED)
    logger.info(
        "Refund %s of %s made at Stripe recorded as credit note %s",
        refund.refund_id,
        charge.payment_intent_id,
        credit_note.number,
        extra={"organisation_id": invoice.organisation_id, "invoice_id": invoice.pk},
    )
    closed = _unmatched_close(refund, note=f"recorded as credit note {credit_note.number}", now=now)
    if double is not None and charge.amount_refunded >= charge.amount:
        closed += _double_charge_refunded(double, refund, credit_note, now=now)
    return RefundRecorded(RefundOutcome.CREDIT_NOTE_ISSUED, credit_note=credit_note, closed=closed)


def _unmatched_close(refund: ProcessorRefund, *, note: str, now: datetime) -> int:
    """Close the refund's open "no credit note here" difference, now that it is settled."""
    closed = 0
    for difference in ReconciliationDifference.objects.select_for_update().filter(
        kind=Kind.REFUND_UNMATCHED, processor_id=refund.refund_id, resolved_at__isnull=True
    ):
        difference_close(
            difference, note=f"Closed automatically on {now:%Y-%m-%d %H:%M} UTC: {note}.", now=now
        )
        closed += 1
    return closed


def _double_charge_refunded(
    double: ReconciliationDifference,
    refund: ProcessorRefund,
    credit_note: CreditNote,
    *,
    now: datetime,
) -> int:
    """The second charge is refunded in full at Stripe: its difference is settled."""
    double = ReconciliationDifference.objects.select_for_update().get(pk=double.pk)
    if double.resolved_at is not None:
        return 0
    double.resolved_at = now
    double.resolution = Resolution.REFUNDED
    double.note = f"Refunded in Stripe ({refund.refund_id}): credit note {credit_note.number}."
    double.save(update_fields=["resolved_at", "resolution", "note"])
    return 1


def _their_refund(refund: ProcessorRefund, charge: RefundedCharge) -> dict:
    return {
        "refund": refund.refund_id,
        "payment_intent": charge.payment_intent_id,
        "status": refund.status,
        "amount": refund.amount,
        "currency": refund.currency.upper(),
        "charge_amount": charge.amount,
        "amount_refunded": charge.amount_refunded,
        "created": refund.created.isoformat(),
        "customer": charge.customer_id,
    }


# Refunding a second charge ---------------------------------------------------------------------


def _second_charge_credit(payment_intent_id: str, amount: int) -> credit_notes.Credit:
    # No tax: the second charge paid for nothing, so no sale is credited, and it is not part
    # of what the invoice has credited (Invoice.amount_credited).
    return credit_notes.Credit(
        invoice_line=None,
        description=f"Refund of a second charge ({payment_intent_id})",
        amount=amount,
        tax_amount=0,
    )


def second_charge_refund_add(
    *,
    invoice: Invoice,
    payment: Payment | None,
    payment_intent_id: str,
    amount: int,
    actor: Actor,
    now: datetime,
) -> Refund:
    """The credit note (reason "duplicate", a refund to the card) of a second charge of the
    invoice, and its pending Refund row with our idempotency key (caller's transaction,
    invoice locked). The caller sends it to Stripe once committed
    (`credit_notes.refund_send`). `payment` is our row for that charge, if we have one."""
    credit_note = credit_notes._issue(
        invoice,
        [_second_charge_credit(payment_intent_id, amount)],
        reason=CreditNote.Reason.DUPLICATE,
        outcome=CreditNote.Outcome.REFUND,
        note="",
        reference="",
        actor=actor,
        now=now,
    )
    return Refund.objects.create(
        organisation_id=invoice.organisation_id,
        credit_note=credit_note,
        payment=payment,
        payment_intent_id=payment_intent_id,
        amount=amount,
        currency=invoice.currency,
        idempotency_key=f"credit-note-{credit_note.public_id}-refund",
        created_at=now,
    )
