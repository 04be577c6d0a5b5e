"""Reconciliation differences, opened wherever we learn of them: the daily reconciliation
(billing.reconciliation), a webhook or a charge's own answer (a second charge for an invoice
already paid), a refund made at Stripe that no credit note can record (billing.stripe_refunds).

A difference is one open row per key, found again it only moves last_seen_at. The key is
(kind, Stripe id, payment) for the differences of a payment, and (kind, Stripe id) for a
double charge (the PaymentIntent) and an unmatched refund (the refund), which whoever finds
them may pair with our payment or not. A difference a person resolved never reopens; one
closed automatically may. Ops resolve them in Django admin (billing.reconciliation).
"""

import logging
from datetime import datetime

from django.db import IntegrityError, connection, transaction

from billing.models import Invoice, Payment, ReconciliationDifference

# Reconciliation's own name: log searches and alerts on differences use it.
logger = logging.getLogger("billing.reconciliation")

Kind = ReconciliationDifference.Kind
Resolution = ReconciliationDifference.Resolution

# One open row per Stripe id, whichever payment of ours it was found with.
ONE_PER_STRIPE_ID = frozenset({Kind.DOUBLE_CHARGE, Kind.REFUND_UNMATCHED})


def difference_key(kind: str, processor_id: str, payment_id: int | None) -> tuple:
    """What makes a difference the same one: (kind, Stripe id, payment or None)."""
    return (kind, processor_id, None if kind in ONE_PER_STRIPE_ID else payment_id)


def difference_open(
    *,
    kind: str,
    processor_id: str,
    organisation_id: int | None,
    payment: Payment | None,
    invoice: Invoice | None,
    ours: dict,
    theirs: dict,
    now: datetime,
) -> str:
    """Open the difference, or note it was seen again with both sides as they are now (its
    own transaction, or the caller's): "new", "seen", or "decided" when a person resolved it
    already (their decision stands; our view may also be older than their change)."""
    key = difference_key(kind, processor_id, payment.pk if payment else None)
    with transaction.atomic():
        # Two finders at once (a webhook and the daily run) wait here for each other.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"reconciliation:{key!r}"]
            )
        same = ReconciliationDifference.objects.filter(kind=kind, processor_id=processor_id)
        if kind not in ONE_PER_STRIPE_ID:
            same = same.filter(payment=payment)
        values = {
            "organisation_id": organisation_id,
            "invoice": invoice,
            "ours": ours,
            "theirs": theirs,
            "last_seen_at": now,
        }
        difference = same.select_for_update().filter(resolved_at__isnull=True).first()
        if difference is None:
            if (
                same.filter(resolved_at__isnull=False)
                .exclude(resolution=Resolution.NO_ACTION, resolved_by__isnull=True)
                .exists()
            ):
                return "decided"
            try:
                with transaction.atomic():  # a savepoint: a concurrent finder may insert first
                    ReconciliationDifference.objects.create(
                        kind=kind,
                        processor_id=processor_id,
                        payment=payment,
                        found_at=now,
                        **values,
                    )
            except IntegrityError:
                difference = same.select_for_update().get(resolved_at__isnull=True)
            else:
                logger.warning(
                    "Reconciliation: %s %s (payment %s)",
                    kind,
                    processor_id or "-",
                    payment.pk if payment else None,
                    extra={"organisation_id": organisation_id},
                )
                return "new"
        fields = ["organisation", "invoice", "ours", "theirs", "last_seen_at"]
        if payment is not None and difference.payment_id != payment.pk:
            difference.payment = payment  # paired with our payment since it was found
            fields.append("payment")
        for field, value in values.items():
            setattr(difference, field, value)
        difference.save(update_fields=fields)
    return "seen"


def double_charge_open(
    *, payment: Payment | None, invoice: Invoice, processor_id: str, theirs: dict, now: datetime
) -> str:
    """A second successful charge (PaymentIntent `processor_id`) for an invoice already paid:
    ops refund it with "Refund this charge" (billing.reconciliation.difference_resolve_refund).
    Where a success is recorded (caller's transaction, invoice locked)."""
    return difference_open(
        kind=Kind.DOUBLE_CHARGE,
        processor_id=processor_id,
        organisation_id=invoice.organisation_id,
        payment=payment,
        invoice=invoice,
        ours=our_side(payment, invoice),
        theirs={"payment_intent": processor_id, "status": "succeeded", **theirs},
        now=now,
    )


def difference_close(difference: ReconciliationDifference, *, note: str, now: datetime) -> None:
    """Close an open difference that no longer differs (caller's transaction, row locked); it
    may reopen, as nobody decided on it."""
    difference.resolved_at = now
    difference.resolution = Resolution.NO_ACTION
    difference.note = note[:500]
    difference.save(update_fields=["resolved_at", "resolution", "note"])


def our_side(payment: Payment | None, invoice: Invoice | None) -> dict:
    """Our payment and invoice as ops compare them with Stripe's side."""
    side: dict = {}
    if invoice is not None:
        side |= {
            "invoice": invoice.number,
            "invoice_status": invoice.status,
            "invoice_total": invoice.total,
            "amount_due": invoice.amount_due,
            "currency": invoice.currency,
        }
    if payment is not None:
        side |= {
            "payment": payment.pk,
            "attempt": payment.attempt,
            "status": payment.status,
            "amount": payment.amount,
            "currency": payment.currency,
            "processor_id": payment.processor_id,
            "idempotency_key": payment.idempotency_key,
            "created": payment.created_at.isoformat(),
        }
    else:
        side["status"] = "no payment recorded"
    return side
