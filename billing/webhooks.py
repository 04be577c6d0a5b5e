"""Stripe webhooks: the processor tells us how our charges ended.

The charge call itself normally tells us (billing.payments.invoice_charge). The webhook is
for when it could not: the HTTP answer was lost (timeout, crash) and the payment row stayed
pending. Each event is stored once by its id (StripeEvent), so a redelivered event changes
nothing, and is applied in the same transaction, with the payment row locked.

Events come in any order and more than once. A PaymentIntent can fail several attempts and
then succeed; it never fails after succeeding. So `payment_intent.succeeded` is the truth
and final: it pays a pending payment, and also one we recorded as failed (the customer was
charged; leaving the invoice open would charge them again). `payment_intent.payment_failed`
only fails a pending payment and never undoes a success; when the bank asked for
authentication (an off-session charge), the payment waits for the customer instead, as the
charge's own answer would have recorded it. A failed 3-D Secure challenge leaves a waiting
payment waiting: the customer may try again on Confirm payment. A success for an invoice
already paid opens a "Charged twice" difference for ops to refund.

`charge.refunded` records the refunds made of a charge (billing.stripe_refunds): ours are
done, one made in the Stripe dashboard becomes a credit note "refunded in Stripe". Dispute
events (`charge.dispute.*`, chargebacks) are applied by billing.disputes.
"""

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q

from billing.differences import double_charge_open
from billing.disputes import DISPUTE_EVENTS, dispute_event_apply
from billing.gateway import GatewayErrorCode
from billing.models import Invoice, Payment, StripeEvent
from billing.payments import (
    PaymentFailure,
    payment_failed,
    payment_needs_authentication,
    payment_succeeded,
)
from billing.stripe_refunds import charge_refunded

logger = logging.getLogger(__name__)

SUCCEEDED = "payment_intent.succeeded"
FAILED = "payment_intent.payment_failed"
# A refund was made of a charge (ours, or in the Stripe dashboard): billing.stripe_refunds.
REFUNDED = "charge.refunded"
HANDLED_TYPES = frozenset({SUCCEEDED, FAILED, REFUNDED})

# Invoices a late success may still pay: nobody else paid or voided them.
_PAYABLE = (Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE)


@dataclass(frozen=True)
class WebhookResult:
    """What the endpoint answers: `status` is processed, ignored or duplicate."""

    status: str
    outcome: str


def stripe_event_receive(*, event: dict[str, Any], now: datetime) -> WebhookResult:
    """Store a verified Stripe event once and apply it (one transaction).

    A redelivered event id is a duplicate: nothing changes. Event types we do not handle
    are stored and ignored. PaymentIntent events are matched to our Payment by the
    PaymentIntent id, or by the idempotency key `gateway.charge` put in its metadata (a
    charge whose answer we never got has no PaymentIntent id on our side).
    """
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: the duplicate's error stays in it
                record = StripeEvent.objects.create(
                    event_id=event["id"], type=event["type"], payload=event, received_at=now
                )
        except IntegrityError:
            # Also a concurrent delivery: the INSERT waited for the first one to commit.
            logger.info("Stripe event %s (%s) already received", event["id"], event["type"])
            return WebhookResult(status="duplicate", outcome="")
        if record.type == REFUNDED:
            status = "processed"
            outcome = charge_refunded(charge=event["data"]["object"], now=now)
        elif record.type in HANDLED_TYPES:
            status = "processed"
            outcome = _payment_intent_event(record.type, event["data"]["object"], now=now)
        elif record.type in DISPUTE_EVENTS:
            # Chargebacks: billing.disputes (out-of-order safe, a lost one reopens the invoice).
            status, outcome = "processed", dispute_event_apply(event=event, now=now)
        else:
            status, outcome = "ignored", "ignored: event type not handled"
        record.processed_at = now
        record.outcome = outcome[:255]
        record.save(update_fields=["processed_at", "outcome"])
    logger.info("Stripe event %s (%s): %s", record.event_id, record.type, outcome)
    return WebhookResult(status=status, outcome=outcome)


def _payment_intent_event(event_type: str, intent: dict[str, Any], *, now: datetime) -> str:
    """Reconcile our payment with a PaymentIntent event (caller's transaction); the outcome."""
    if not isinstance(intent.get("id"), str) or not intent["id"].startswith("pi_"):
        return "ignored: not a PaymentIntent"
    payment = _payment_for_intent(intent)
    if payment is None:
        return "unknown payment"
    if (intent.get("amount"), str(intent.get("currency", "")).lower()) != (
        payment.amount,
        payment.currency.lower(),
    ):
        logger.error(
            "PaymentIntent %s is %s %s but payment %s is %s %s",
            intent.get("id"),
            intent.get("amount"),
            intent.get("currency"),
            payment.pk,
            payment.amount,
            payment.currency,
        )
        return f"needs review: amount differs from payment {payment.pk}"
    if event_type == SUCCEEDED:
        return _succeeded(payment, intent, now=now)
    return _failed(payment, intent, now=now)


def _payment_for_intent(intent: dict[str, Any]) -> Payment | None:
    """Our card payment for the PaymentIntent, locked, or None."""
    intent_id = intent["id"]
    metadata = intent.get("metadata")
    key = metadata.get("idempotency_key") if isinstance(metadata, dict) else None
    match = Q(processor_id=intent_id)
    if isinstance(key, str) and key:
        match |= Q(idempotency_key=key)
    payments = list(
        Payment.objects.select_for_update(of=("self",))
        .select_related("invoice", "invoice__organisation")
        .filter(match)
        .order_by("pk")
    )
    # The PaymentIntent id is ours once recorded; the key finds attempts without it.
    by_id = [p for p in payments if p.processor_id == intent_id]
    return (by_id or payments or [None])[0]


def _succeeded(payment: Payment, intent: dict[str, Any], *, now: datetime) -> str:
    if payment.status == Payment.Status.SUCCEEDED:
        return "ignored: already succeeded"
    invoice = Invoice.objects.select_for_update().get(pk=payment.invoice_id)
    if invoice.status not in _PAYABLE:
        # Paid meanwhile by another attempt or by ops, or voided (a declined upgrade):
        # the customer was charged for nothing. A refund is ops' decision.
        logger.error(
            "PaymentIntent %s succeeded but invoice %s is %s: needs review",
            intent["id"],
            invoice.number,
            invoice.status,
        )
        if invoice.status == Invoice.Status.PAID:  # ops refund it: "Refund this charge"
            double_charge_open(
                payment=payment,
                invoice=invoice,
                processor_id=intent["id"],
                theirs=_intent_side(intent),
                now=now,
            )
        return f"needs review: charged but invoice {invoice.number} is {invoice.status}"
    earlier = payment.status
    payment_succeeded(payment=payment, processor_id=intent["id"], now=now)
    if earlier == Payment.Status.FAILED:
        logger.warning("Payment %s recorded as failed succeeded at Stripe", payment.pk)
        return f"succeeded after recorded failure: invoice {invoice.number} paid"
    return f"succeeded: invoice {invoice.number} paid"


def _intent_side(intent: dict[str, Any]) -> dict:
    """Stripe's side of a double charge, as the event tells it."""
    metadata = intent.get("metadata") if isinstance(intent.get("metadata"), dict) else {}
    return {
        "amount": intent.get("amount"),
        "currency": str(intent.get("currency", "")).upper(),
        "customer": intent.get("customer") or "",
        "invoice": metadata.get("invoice", ""),
        "payment": metadata.get("payment", ""),
        "idempotency_key": metadata.get("idempotency_key", ""),
    }


def _failed(payment: Payment, intent: dict[str, Any], *, now: datetime) -> str:
    if payment.status != Payment.Status.PENDING:
        return f"ignored: already {payment.status}"
    error = intent.get("last_payment_error")
    error = error if isinstance(error, dict) else {}
    code = error.get("code") or PaymentFailure.DECLINED  # as PaymentError.code: card_declined, ...
    message = error.get("message") or "The payment was declined."
    if code == GatewayErrorCode.AUTHENTICATION_REQUIRED:
        payment_needs_authentication(
            payment=payment, processor_id=intent["id"], now=now, on_session=False
        )
        return "needs authentication"
    invoice = Invoice.objects.get(pk=payment.invoice_id)
    payment_failed(payment=payment, code=code, message=message, now=now)
    if invoice.status != Invoice.Status.OPEN:
        return f"failed: {code}; invoice {invoice.number} is {invoice.status}"
    return f"failed: {code}"
