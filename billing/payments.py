"""Payments: charging an invoice to the card on file, recording how a payment ended, and
payments ops record by hand (bank transfer, purchase order).

Network calls to Stripe never run inside a database transaction: a payment attempt row is
committed first (its id gives the idempotency key), then the card is charged, then the
outcome is recorded; a retry reuses the same key, so a card is never charged twice.

3-D Secure (docs/architecture.md#decision-3-d-secure): a charge the bank wants the customer
to authenticate leaves its attempt `requires_action` with its PaymentIntent. That attempt is
the invoice's until it ends: Confirm payment confirms that same PaymentIntent on session (never
a second one), the automatic charges leave it alone, and a new card replaces it.
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
from billing.differences import double_charge_open
from billing.documents import invoice_url
from billing.dunning import Step, dunning_open, dunning_resolve_if_paid, step_due_at
from billing.models import BillingProfile, Invoice, Payment, PaymentMethod
from billing.upgrades import upgrade_apply, upgrade_declined
from core.errors import ServiceError
from core.links import absolute_url
from core.observability import log_context
from subscriptions.models import PaymentMethodKind, PlanChange, Subscription
from subscriptions.states import subscription_transition

# The logger name from before billing.services was split: log searches and alerts use it.
logger = logging.getLogger("billing.services")


class PaymentFailure(StrEnum):
    """Our own `Payment.failure_code`s; otherwise it is the processor's (card_declined, ...)."""

    NO_CARD = "no_card"
    DECLINED = "declined"
    # A waiting 3-D Secure attempt whose card was replaced before the customer confirmed it.
    SUPERSEDED = "superseded"
    CANCELED = "payment_intent_canceled"


class ChargeOutcome(StrEnum):
    """How a charge made while the customer waits ended, as a page tells it."""

    PAID = "paid"
    DECLINED = "declined"
    # The bank asks the customer to authenticate (3-D Secure) on Confirm payment.
    NEEDS_AUTHENTICATION = "needs_authentication"
    # The processor did not answer (or another charge of the invoice is under way): the
    # charge job learns the outcome later, with the same key.
    UNANSWERED = "unanswered"


def charge_outcome(payment: Payment | None) -> ChargeOutcome:
    if payment is not None and payment.status == Payment.Status.SUCCEEDED:
        return ChargeOutcome.PAID
    if payment is not None and payment.status == Payment.Status.FAILED:
        return ChargeOutcome.DECLINED
    if payment is not None and payment.status == Payment.Status.REQUIRES_ACTION:
        return ChargeOutcome.NEEDS_AUTHENTICATION
    return ChargeOutcome.UNANSWERED


# In the idempotency key of every payment ops record by hand (bank transfer, PO, or a card
# invoice settled outside Stripe): such payments have no charge at Stripe to compare or refund.
MANUAL_KEY = "-manual-"

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
        waiting = invoice.payments.filter(status=Payment.Status.REQUIRES_ACTION).first()
        if waiting is not None:
            if method is not None and waiting.payment_method_id == method.pk:
                return waiting  # the same PaymentIntent, confirmed again on session
            _end_waiting(
                waiting,
                code=PaymentFailure.SUPERSEDED,
                message="A new card was saved before this payment was confirmed.",
                now=now,
            )
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


def _end_waiting(payment: Payment, *, code: str, message: str, now: datetime) -> None:
    """A 3-D Secure attempt nobody will confirm any more ends failed (caller's transaction)."""
    payment.status = Payment.Status.FAILED
    payment.failure_code = code[:64]
    payment.failure_message = message[:255]
    payment.completed_at = now
    payment.save(update_fields=["status", "failure_code", "failure_message", "completed_at"])


def _customer_id(payment: Payment) -> str:
    return BillingProfile.objects.get(organisation_id=payment.organisation_id).stripe_customer_id


def invoice_charge(
    *, invoice: Invoice, now: datetime, notify_failure: bool = True, on_session: bool = False
) -> Payment | None:
    """Charge an open invoice to the card on file. Returns the attempt.

    Off-session (the jobs, dunning): a card whose bank asks for authentication leaves the
    attempt `requires_action`, the customer is emailed a Confirm payment link and the invoice
    follows the failed-payment schedule; an attempt already waiting is left to the customer.
    `on_session` (the customer is on our page): the bank's challenge runs in their browser;
    an attempt already waiting has its PaymentIntent confirmed again, not replaced.

    The attempt row is committed before Stripe is called and its key is sent with the charge;
    an unanswered call leaves it pending, to be retried later with the same key.
    """
    payment = _claim_card_attempt(invoice, now=now)
    if payment is not None and payment.status == Payment.Status.REQUIRES_ACTION:
        return _authenticate_again(payment, now=now) if on_session else payment
    if payment is None or payment.status != Payment.Status.PENDING:
        return payment
    try:
        result = gateway.charge(
            customer_id=_customer_id(payment),
            payment_method_id=payment.payment_method.stripe_payment_method_id,
            amount=payment.amount,
            currency=payment.currency,
            idempotency_key=payment.idempotency_key,
            description=f"Invoice {payment.invoice.number}",
            metadata={"invoice": payment.invoice.number, "payment": str(payment.pk)},
            on_session=on_session,
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
        if error.code == gateway.GatewayErrorCode.AUTHENTICATION_REQUIRED and (
            error.payment_intent_id
        ):
            return payment_needs_authentication(
                payment=payment,
                processor_id=error.payment_intent_id,
                now=now,
                on_session=on_session,
                notify=notify_failure,
            )
        return payment_declined(
            payment=payment,
            code=error.code or PaymentFailure.DECLINED,
            message=error.message,
            now=now,
            notify=notify_failure,
        )
    if result.needs_authentication:
        return payment_needs_authentication(
            payment=payment, processor_id=result.payment_intent_id, now=now, on_session=True
        )
    return payment_succeeded(payment=payment, processor_id=result.payment_intent_id, now=now)


def _authenticate_again(payment: Payment, *, now: datetime) -> Payment:
    """The customer is back for a waiting attempt: its PaymentIntent is made ready for the
    bank's challenge again (confirmed on session when the last challenge failed)."""
    try:
        result = gateway.payment_intent_authenticate(
            payment_intent_id=payment.processor_id,
            payment_method_id=payment.payment_method.stripe_payment_method_id,
        )
    except gateway.GatewayUnavailable:
        return payment  # still waiting; the page says the processor did not answer
    except gateway.PaymentError as error:
        return payment_declined(
            payment=payment,
            code=error.code or PaymentFailure.DECLINED,
            message=error.message,
            now=now,
            notify=False,
        )
    if result.paid:
        return payment_succeeded(payment=payment, processor_id=result.payment_intent_id, now=now)
    return payment


def payment_needs_authentication(
    *, payment: Payment, processor_id: str, now: datetime, on_session: bool, notify: bool = True
) -> Payment:
    """The bank wants the customer to authenticate this charge: the attempt waits with its
    PaymentIntent. Off-session, the invoice starts the failed-payment schedule (its day 0
    says so) and the billing recipients get the Confirm payment link; on session the customer
    is on the page already. Recording it twice (charge answer and webhook) changes nothing."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().select_related("invoice").get(pk=payment.pk)
        if payment.status != Payment.Status.PENDING:
            return payment
        invoice = Invoice.objects.select_for_update().get(pk=payment.invoice_id)
        payment.status = Payment.Status.REQUIRES_ACTION
        payment.processor_id = processor_id
        payment.failure_code = gateway.GatewayErrorCode.AUTHENTICATION_REQUIRED
        payment.failure_message = gateway.AUTHENTICATION_REQUIRED_MESSAGE
        payment.authentication_requested_at = now
        payment.save(
            update_fields=[
                "status",
                "processor_id",
                "failure_code",
                "failure_message",
                "authentication_requested_at",
            ]
        )
        if on_session or invoice.status != Invoice.Status.OPEN:
            return payment
        case = None
        if invoice.subscription_id and invoice.kind != Invoice.Kind.UPGRADE:
            case = dunning_open(
                subscription=invoice.subscription,
                started_at=now,
                now=now,
                result=NEEDS_AUTHENTICATION_RESULT,
                attempts=1,
            )
        if notify:
            email_send(
                template="payment_action_required",
                to=billing_recipients(organisation=invoice.organisation),
                context={
                    "invoice": invoice,
                    "payment": payment,
                    "confirm_url": confirm_payment_url(invoice),
                    "suspension_at": step_due_at(case, Step.DAY_14) if case else None,
                },
                organisation=invoice.organisation,
            )
    return payment


# What the dunning timeline records for a charge that waits for the customer's bank.
NEEDS_AUTHENTICATION_RESULT = "needs authentication: your bank asked you to confirm the payment"


def confirm_payment_url(invoice: Invoice) -> str:
    return absolute_url("billing:confirm_payment", invoice.organisation.slug, invoice.number)


def payment_declined(
    *, payment: Payment, code: str, message: str, now: datetime, notify: bool = True
) -> Payment:
    """`payment_failed` in its own transaction, the payment row locked; the payment as it is
    now (a payment that ended meanwhile is left as it is)."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        payment_failed(payment=payment, code=code, message=message, now=now, notify=notify)
    return payment


def payment_failed(
    *, payment: Payment, code: str, message: str, now: datetime, notify: bool = True
) -> None:
    """A charge was declined (told by the charge call or later by a webhook); caller's
    transaction, payment row locked.

    A declined upgrade that waits for its payment voids its invoice (the old plan stays); any
    other invoice, an applied upgrade's too (owed again after a withdrawn success or a lost
    dispute: the new plan was used), starts the failed-payment schedule (day 0; nothing new
    when a case is already open). An invoice paid or voided meanwhile owes nothing: the
    attempt is recorded, quietly.
    """
    invoice = (
        Invoice.objects.select_for_update(of=("self",))
        .select_related("plan_change")
        .get(pk=payment.invoice_id)
    )
    if invoice.status != Invoice.Status.OPEN:
        _record_failure(payment, code=code, message=message, now=now, notify=False)
        return
    upgrade = (
        invoice.kind == Invoice.Kind.UPGRADE
        and invoice.plan_change is not None
        and invoice.plan_change.status != PlanChange.Status.APPLIED
    )
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
    # A waiting 3-D Secure attempt can be declined once authenticated.
    if payment.status not in (Payment.Status.PENDING, Payment.Status.REQUIRES_ACTION):
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
        # Written off as uncollectible, the invoice is still owed: money that arrives pays it.
        if invoice.status not in (Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE):
            # Money arrived for an invoice already settled another way: never a second success
            # on one invoice; ops refund it ("Charged twice", "Refund this charge").
            logger.error(
                "Payment %s succeeded but invoice %s is %s: needs review (refund)",
                payment.pk,
                invoice.number,
                invoice.status,
                extra={"organisation_id": invoice.organisation_id, "invoice_id": invoice.pk},
            )
            if invoice.status == Invoice.Status.PAID and processor_id:
                double_charge_open(
                    payment=payment,
                    invoice=invoice,
                    processor_id=processor_id,
                    theirs={"amount": payment.amount, "currency": payment.currency},
                    now=now,
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
    invoice.amount_paid += payment.amount
    invoice.save(update_fields=["amount_paid"])
    invoice_settle(invoice, now=now)


def invoice_settle(invoice: Invoice, *, now: datetime) -> None:
    """Nothing is owed on the invoice any more (paid, or credited in full): it is paid, and
    what it was for follows: an upgrade applies, a first invoice activates the subscription,
    a failing one is restored (caller's transaction, invoice locked)."""
    invoice.status = Invoice.Status.PAID
    invoice.paid_at = now
    invoice.closed_at = now
    invoice.save(update_fields=["status", "paid_at", "closed_at"])
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
            idempotency_key=f"invoice-{invoice.public_id}{MANUAL_KEY}{attempt}",
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
