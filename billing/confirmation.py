"""Confirm payment: the page where the customer answers their bank's 3-D Secure challenge for
an invoice, whether the charge was on session (checkout, Upgrade Plan, Retry Payment) or
off-session (a renewal, an overage invoice, a dunning retry: the email links here).

The page never creates a second PaymentIntent for an attempt: it shows the waiting attempt's
client secret to Stripe.js, and when the bank's challenge is over it asks Stripe how the
PaymentIntent stands (never the browser) and records that outcome. The webhook may record it
first; both go through billing.payments, which records a success once
(docs/architecture.md#decision-3-d-secure).
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from django.db import transaction

from billing import gateway
from billing.models import Invoice, Payment
from billing.payments import (
    PaymentFailure,
    invoice_charge,
    payment_declined,
    payment_succeeded,
)
from billing.upgrades import upgrade_declined
from core.errors import ServiceError
from subscriptions.models import PaymentMethodKind

logger = logging.getLogger(__name__)

# An upgrade waiting for the bank's confirmation is given up after this long (its invoice is
# voided, the plan stays): the customer was on the page and left. Renewals and other invoices
# wait for the failed-payment schedule instead.
UPGRADE_CONFIRMATION_WINDOW = timedelta(hours=1)


class Confirmation(StrEnum):
    """Where an invoice stands on Confirm payment."""

    PAID = "paid"  # paid, now or before: nothing more is charged
    WAITING = "waiting"  # the bank's challenge can run (client secret known)
    RETRY = "retry"  # the last challenge failed or was left: confirm again on session
    DECLINED = "declined"  # the card was declined: update it or retry from Payment Method
    UNANSWERED = "unanswered"  # the processor did not answer; try again in a minute
    CLOSED = "closed"  # voided or otherwise closed: nothing to pay
    NOT_BY_CARD = "not_by_card"  # paid by bank transfer or purchase order, never charged here


@dataclass(frozen=True)
class ConfirmState:
    state: Confirmation
    invoice: Invoice
    payment: Payment | None = None
    client_secret: str = ""
    message: str = ""


def waiting_payment(invoice: Invoice) -> Payment | None:
    """The invoice's attempt waiting for the customer's authentication, if any."""
    return (
        invoice.payments.filter(status=Payment.Status.REQUIRES_ACTION)
        .select_related("payment_method")
        .first()
    )


def confirm_payment_state(*, invoice: Invoice) -> ConfirmState:
    """What Confirm payment shows (read only: asks Stripe, changes nothing there)."""
    if invoice.status == Invoice.Status.PAID:
        return ConfirmState(Confirmation.PAID, invoice)
    if invoice.status != Invoice.Status.OPEN:
        return ConfirmState(Confirmation.CLOSED, invoice)
    if invoice.payment_method_kind != PaymentMethodKind.CARD:
        return ConfirmState(Confirmation.NOT_BY_CARD, invoice)
    payment = waiting_payment(invoice)
    if payment is None:
        last = invoice.payments.order_by("-attempt").first()
        if last is not None and last.status == Payment.Status.FAILED:
            return ConfirmState(
                Confirmation.DECLINED, invoice, payment=last, message=last.failure_message
            )
        return ConfirmState(Confirmation.RETRY, invoice, payment=last)
    intent = _intent_state(payment)
    if intent is None:
        return _unanswered(invoice, payment)
    if intent.needs_authentication:
        return ConfirmState(
            Confirmation.WAITING, invoice, payment=payment, client_secret=intent.client_secret
        )
    return ConfirmState(
        Confirmation.RETRY, invoice, payment=payment, message=_failure_message(intent)
    )


def confirm_payment_begin(*, invoice: Invoice, now: datetime) -> ConfirmState:
    """The customer asks to confirm (again): the waiting PaymentIntent is confirmed on session,
    or, when there is none (declined, or a new card since), the invoice is charged on session.
    Then the page shows the bank's challenge, or the outcome."""
    invoice.refresh_from_db()
    if (
        invoice.status != Invoice.Status.OPEN
        or invoice.payment_method_kind != PaymentMethodKind.CARD
    ):
        return confirm_payment_state(invoice=invoice)
    _refuse_stale_upgrade(invoice, now=now)
    try:
        payment = invoice_charge(invoice=invoice, now=now, notify_failure=False, on_session=True)
    except ServiceError:
        invoice.refresh_from_db()
        return confirm_payment_state(invoice=invoice)
    invoice.refresh_from_db()
    if payment is None:
        return ConfirmState(
            Confirmation.UNANSWERED,
            invoice,
            message="This payment is being processed in another window. Refresh in a minute.",
        )
    if payment.status == Payment.Status.PENDING:
        return _unanswered(invoice, payment)
    return confirm_payment_state(invoice=invoice)


def confirm_payment_finish(*, invoice: Invoice, now: datetime) -> ConfirmState:
    """The bank's challenge is over in the browser: record what Stripe says happened.

    Safe twice and beside the webhook: a success is recorded once; a failed or abandoned
    challenge leaves the attempt waiting (the invoice open, an upgrade not applied) for the
    customer to try again; a card declined after authentication is a decline as any other.
    """
    invoice.refresh_from_db()  # the webhook may have paid it meanwhile
    payment = waiting_payment(invoice)
    if payment is None:
        return confirm_payment_state(invoice=invoice)
    intent = _intent_state(payment)
    if intent is None:
        return _unanswered(invoice, payment)
    if intent.paid:
        payment_succeeded(payment=payment, processor_id=intent.payment_intent_id, now=now)
    elif intent.status == "canceled":
        _payment_failed(
            payment, code=PaymentFailure.CANCELED, message=gateway.GENERIC_MESSAGE, now=now
        )
    elif intent.status == "requires_payment_method" and not _authentication_failure(intent):
        # Authenticated, then declined by the issuer (e.g. insufficient funds).
        _payment_failed(
            payment,
            code=intent.failure_code or PaymentFailure.DECLINED,
            message=intent.failure_message or gateway.GENERIC_MESSAGE,
            now=now,
        )
    invoice.refresh_from_db()
    return confirm_payment_state(invoice=invoice)


def _intent_state(payment: Payment) -> gateway.ChargeResult | None:
    """The PaymentIntent as Stripe has it now, or None when Stripe does not answer."""
    try:
        return gateway.payment_intent_state(payment_intent_id=payment.processor_id)
    except gateway.PaymentError:
        return None


def _unanswered(invoice: Invoice, payment: Payment) -> ConfirmState:
    return ConfirmState(
        Confirmation.UNANSWERED, invoice, payment=payment, message=gateway.UNAVAILABLE_MESSAGE
    )


def _payment_failed(payment: Payment, *, code: str, message: str, now: datetime) -> None:
    payment_declined(payment=payment, code=code, message=message, now=now, notify=False)


def _authentication_failure(intent: gateway.ChargeResult) -> bool:
    return intent.failure_code in (
        gateway.GatewayErrorCode.AUTHENTICATION_FAILED,
        gateway.GatewayErrorCode.AUTHENTICATION_REQUIRED,
    )


def _failure_message(intent: gateway.ChargeResult) -> str:
    if intent.failure_code == gateway.GatewayErrorCode.AUTHENTICATION_REQUIRED:
        return ""  # refused off-session: the customer has not tried yet
    if _authentication_failure(intent):
        return gateway.AUTHENTICATION_FAILED_MESSAGE
    return intent.failure_message


def _refuse_stale_upgrade(invoice: Invoice, *, now: datetime) -> None:
    """An upgrade whose period has ended (or was given up) cannot be paid any more."""
    if invoice.kind == Invoice.Kind.UPGRADE and invoice.period_end <= now:
        with transaction.atomic():
            upgrade_declined(invoice, now=now)
        raise ServiceError(
            "This upgrade was for a billing period that has ended; nothing was charged. "
            "Upgrade again from Settings > Subscription."
        )


def upgrade_confirmation_cancel(*, invoice: Invoice, now: datetime) -> bool:
    """The customer gives up an upgrade waiting for their bank: its invoice is voided, the
    plan stays, the PaymentIntent is cancelled. False when it was paid or closed meanwhile."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.kind != Invoice.Kind.UPGRADE or invoice.status != Invoice.Status.OPEN:
            return False
        payments = list(
            invoice.payments.select_for_update().filter(status=Payment.Status.REQUIRES_ACTION)
        )
        for payment in payments:
            payment.status = Payment.Status.FAILED
            payment.failure_code = PaymentFailure.CANCELED
            payment.failure_message = "The upgrade was cancelled before the payment was confirmed."
            payment.completed_at = now
            payment.save(
                update_fields=["status", "failure_code", "failure_message", "completed_at"]
            )
        upgrade_declined(invoice, now=now)
    for payment in payments:
        _cancel_intent(payment.processor_id)
    return True


def upgrades_abandoned_void(*, now: datetime) -> int:
    """Give up upgrades whose bank confirmation was not given within the window (a job)."""
    stale = Invoice.objects.filter(
        kind=Invoice.Kind.UPGRADE,
        status=Invoice.Status.OPEN,
        payments__status=Payment.Status.REQUIRES_ACTION,
        payments__created_at__lte=now - UPGRADE_CONFIRMATION_WINDOW,
    ).distinct()
    voided = 0
    for invoice in list(stale[:200]):
        if upgrade_confirmation_cancel(invoice=invoice, now=now):
            voided += 1
    return voided


def _cancel_intent(payment_intent_id: str) -> None:
    if not payment_intent_id:
        return
    try:
        gateway.payment_intent_cancel(payment_intent_id=payment_intent_id)
    except gateway.PaymentError:
        # Nobody confirms it any more; a success that still came would be reviewed.
        logger.warning("Could not cancel PaymentIntent %s", payment_intent_id)
