"""Collecting failed payments: the charge attempts of the dunning schedule (days 3 and 7),
Retry Payment, and the retry after Update Card. The case itself (open, steps, resolve,
suspend) is billing.dunning's, which never charges.

A step is claimed in the database before its charges run, the charges run outside any lock
(network I/O), then the outcome is recorded: a killed worker's step is finished once by a
later run, and a charge left unanswered is retried with its idempotency key.
"""

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Exists, OuterRef

from accounts.audit import Actor, audit_record
from billing.dunning import (
    Step,
    dunning_cases_open,
    dunning_step_claim,
    dunning_step_finish,
    open_invoices,
)
from billing.models import Invoice, Payment
from billing.payments import NEEDS_AUTHENTICATION_RESULT, invoice_charge
from core.errors import ServiceError
from subscriptions.models import PaymentMethodKind, Subscription


@dataclass(frozen=True)
class RetryOutcome:
    attempts: int
    paid: int
    result: str
    # Charges the processor left unanswered (outcome unknown; retried later with their key).
    unanswered: int = 0
    # The first invoice whose charge waits for the customer's bank (3-D Secure): Confirm
    # payment takes them there.
    needs_authentication: Invoice | None = None

    @property
    def succeeded(self) -> bool:
        return self.attempts > 0 and self.paid == self.attempts


def charge_open_invoices(
    *,
    subscription: Subscription,
    now: datetime,
    answered_since: datetime | None = None,
    on_session: bool = False,
) -> RetryOutcome:
    """Charge every open card invoice of the subscription at once (Retry Payment).

    `on_session`: the customer is on the page, so a bank's challenge can be answered; the
    charges stop at the first invoice that needs it (Confirm payment, then the rest).
    Off-session (the dunning steps) an invoice already waiting for the customer's bank is not
    charged again: it waits for them.

    `answered_since` (finishing an interrupted dunning step): an invoice with a charge
    attempt since then that was answered is not charged again.

    Once the processor leaves a charge unanswered (Stripe down or slow), the remaining
    invoices are not tried: each would wait a whole timeout too, and a page would hang for
    all of them. The unanswered charge is retried with its key by the charge job.
    """
    # Oldest first: the debt that started the failed-payment schedule is paid first.
    invoices = (
        open_invoices(subscription)
        .filter(payment_method_kind=PaymentMethodKind.CARD)
        .order_by("issued_at", "pk")
    )
    if answered_since is not None:
        answered = Payment.objects.filter(
            invoice=OuterRef("pk"), created_at__gte=answered_since
        ).exclude(status=Payment.Status.PENDING)
        invoices = invoices.exclude(Exists(answered))
    invoices = list(invoices)
    attempts = paid = unanswered = 0
    results = []
    awaiting = None
    for invoice in invoices:
        try:
            payment = invoice_charge(
                invoice=invoice, now=now, notify_failure=False, on_session=on_session
            )
        except ServiceError:
            continue  # paid meanwhile
        attempts += 1
        if payment is None:
            results.append("a charge is already in progress")
        elif payment.status == Payment.Status.SUCCEEDED:
            paid += 1
        elif payment.status == Payment.Status.FAILED:
            results.append(payment.failure_message)
        elif payment.status == Payment.Status.REQUIRES_ACTION:
            results.append(NEEDS_AUTHENTICATION_RESULT)
            awaiting = awaiting or invoice
            if on_session:
                break
        else:
            results.append("processor did not answer; retried later with the same key")
            unanswered += 1
            break
    result = "paid" if attempts and paid == attempts else "; ".join(dict.fromkeys(results))
    return RetryOutcome(
        attempts=attempts,
        paid=paid,
        result=result or "nothing to charge",
        unanswered=unanswered,
        needs_authentication=awaiting,
    )


def dunning_advance(*, now: datetime, limit: int = 200) -> int:
    """Run the dunning steps due by `now` (a scheduled job; safe twice and concurrently)."""
    ran = 0
    for case_id in dunning_cases_open(limit=limit):
        if _advance_case(case_id, now=now):
            ran += 1
    return ran


def _advance_case(case_id: int, *, now: datetime) -> bool:
    # 1. Claim the step: the unique (case, step) row is the proof it runs once.
    claim = dunning_step_claim(case_id, now=now)
    if claim is None:
        return False
    subscription = Subscription.objects.select_related("organisation").get(
        pk=claim.case.subscription_id
    )
    # 2. Do the step: charge attempts happen outside any lock (network I/O).
    outcome = RetryOutcome(attempts=0, paid=0, result="no automatic charge (invoice)")
    if (
        claim.step in (Step.DAY_3, Step.DAY_7)
        and subscription.payment_method_kind == PaymentMethodKind.CARD
    ):
        outcome = charge_open_invoices(
            subscription=subscription, now=now, answered_since=claim.resumed_from
        )
    # 3. Record the outcome and move on the schedule, once.
    return dunning_step_finish(
        claim,
        attempts=outcome.attempts,
        succeeded=outcome.succeeded,
        result=outcome.result,
        now=now,
    )


def retry_payment(*, organisation, actor: Actor, now: datetime) -> RetryOutcome:
    """Retry Payment: charge every open invoice at once, any day."""
    subscription = (
        Subscription.objects.select_related("organisation")
        .filter(organisation=organisation)
        .first()
    )
    if subscription is None or not open_invoices(subscription).exists():
        raise ServiceError("Nothing is due: every invoice is paid.")
    if not open_invoices(subscription).filter(payment_method_kind=PaymentMethodKind.CARD).exists():
        raise ServiceError(
            "Your open invoices are paid by bank transfer or purchase order; see the invoice for "
            "the payment details."
        )
    outcome = charge_open_invoices(subscription=subscription, now=now, on_session=True)
    audit_record(
        organisation=organisation,
        actor=actor,
        action="billing.retry_payment",
        target=subscription,
        target_label=outcome.result,
        now=now,
    )
    return outcome


def retry_after_card_update(*, organisation, now: datetime) -> RetryOutcome | None:
    """Update Card while past due: the open invoices are retried with the new card at once."""
    subscription = Subscription.objects.filter(organisation=organisation).first()
    if subscription is None or subscription.status not in (
        Subscription.Status.PAST_DUE,
        Subscription.Status.GRACE,
        Subscription.Status.SUSPENDED,
    ):
        return None
    if not open_invoices(subscription).filter(payment_method_kind=PaymentMethodKind.CARD).exists():
        return None
    return charge_open_invoices(subscription=subscription, now=now, on_session=True)
