"""Payments: charging an invoice to the card on file, recording how a payment ended, and
payments ops record by hand (bank transfer, purchase order).

Network calls to Stripe never run inside a database transaction: a payment attempt row is
committed first (its id gives the idempotency key), then the card is charged, then the
outcome is recorded; a retry reuses the same key, so a card is never charged twice.
"""

import logging
from datetime import datetime, timedelta
from enum import StrEnum

from django.db import transaction
from django.db.models import Exists, Max, OuterRef, Q

from accounts.audit import Actor, audit_record, reason_change
from accounts.emails import email_send
from accounts.selectors import billing_recipients
from billing import gateway
from billing.documents import invoice_url
from billing.dunning import dunning_open, dunning_resolve_if_paid
from billing.models import BillingProfile, Invoice, Payment, PaymentMethod
from billing.upgrades import upgrade_apply, upgrade_declined
from core.errors import ServiceError
from core.links import absolute_url
from core.observability import log_context
from subscriptions.models import PaymentMethodKind, Subscription
from subscriptions.states import subscription_transition

# The logger name from before billing.services was split: log searches and alerts use it.
logger = logging.getLogger("billing.services")


class PaymentFailure(StrEnum):
    """Our own `Payment.failure_code`s; otherwise it is the processor's (card_declined, ...)."""

    NO_CARD = "no_card"
    DECLINED = "declined"


class ChargeOutcome(StrEnum):
    """How a charge made while the customer waits ended, as a page tells it."""

    PAID = "paid"
    DECLINED = "declined"
    # The processor did not answer (or another charge of the invoice is under way): the
    # charge job learns the outcome later, with the same key.
    UNANSWERED = "unanswered"


def charge_outcome(payment: Payment | None) -> ChargeOutcome:
    if payment is not None and payment.status == Payment.Status.SUCCEEDED:
        return ChargeOutcome.PAID
    if payment is not None and payment.status == Payment.Status.FAILED:
        return ChargeOutcome.DECLINED
    return ChargeOutcome.UNANSWERED


# A charge whose outcome we have not heard back is retried (same key) after this long.
PENDING_RETRY_AFTER = timedelta(minutes=2)


# The charge job stops after this many charges left unanswered in one run (Stripe down/slow).
UNANSWERED_CHARGES_STOP = 3


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
            _record_failure(
                payment, code=PaymentFailure.NO_CARD, message="There is no card on file.", now=now
            )
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
                code=error.code or PaymentFailure.DECLINED,
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
        upgrade_declined(invoice, now=now)
    elif invoice.subscription_id:
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
        _paid(payment, invoice, processor_id=processor_id, now=now)
        email_send(
            template="payment_receipt",
            to=billing_recipients(organisation=invoice.organisation),
            context={"invoice": invoice, "payment": payment, "invoice_url": invoice_url(invoice)},
            organisation=invoice.organisation,
        )
    return payment


def _paid(payment: Payment, invoice: Invoice, *, processor_id: str, now: datetime) -> None:
    """The payment succeeded and its invoice is paid; what the invoice was for follows: an
    upgrade applies, a first invoice activates the subscription, a failing one is restored
    (caller's transaction, both rows locked)."""
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
        upgrade_apply(invoice, now=now)
    if invoice.subscription_id:
        subscription = Subscription.objects.select_for_update().get(pk=invoice.subscription_id)
        if subscription.status == Subscription.Status.INCOMPLETE:
            subscription_transition(
                subscription=subscription, to=Subscription.Status.ACTIVE, now=now
            )
        else:
            # Paid up: close the failed-payment case, restore the service.
            dunning_resolve_if_paid(subscription=subscription, now=now)


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
