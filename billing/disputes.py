"""Disputes (chargebacks): a cardholder asked their bank for a card payment back
(docs/architecture.md#decision-a-lost-dispute-reopens-the-invoice).

Stripe tells us with `charge.dispute.created`, `charge.dispute.updated` and
`charge.dispute.closed` events; billing.webhooks stores each once by its id and applies it
here, in its transaction. Events come late, twice and out of order, so:

- One Dispute row per Stripe dispute id. The first event we get of a dispute creates it,
  whichever it is (an `updated` or a `closed` may come before the `created`), and marks the
  payment disputed.
- An event updates the row only when Stripe made it no earlier than the last one applied
  (`Event.created` against `Dispute.event_created`). Stripe's times are whole seconds: at
  the same second, an event that would move the dispute back (under review to needs
  response) is the older one.
- A closed dispute (won, lost, inquiry closed) never reopens.

Won or an inquiry closed: only the record changes. Lost, once (`lost_applied_at`): the bank
took the money back, so the invoice owes it again. The payment is charged back (it no longer
counts as the invoice's one success), `amount_paid` drops by the amount lost, a paid (or
written-off) invoice is open again, and it follows the failed-payment schedule like a
declined charge: day 0 says "Payment reversed by your bank after a dispute", days 3 and 7
charge the amount due. A subscription that is no longer chased (ended, or a new term not
started yet) gets no dunning: the invoice stays open for ops, and the email says to contact
billing support. A void invoice owes nothing: the lost dispute is left for ops to review.
"""

import logging
from datetime import UTC, datetime
from typing import Any

from django.db.models import QuerySet

from accounts.audit import SYSTEM, audit_record
from accounts.emails import email_send
from accounts.selectors import billing_recipients
from billing.dunning import Step, dunning_open, step_due_at
from billing.models import Dispute, DunningCase, Invoice, Payment
from core.links import absolute_url
from core.money import format_money
from subscriptions.models import PaymentMethodKind, Subscription

logger = logging.getLogger(__name__)

Status = Dispute.Status

CREATED = "charge.dispute.created"
UPDATED = "charge.dispute.updated"
CLOSED = "charge.dispute.closed"
DISPUTE_EVENTS = frozenset({CREATED, UPDATED, CLOSED})

# What the dunning timeline's day 0 and the customer's Payment Method page say.
DISPUTE_LOST_RESULT = "Payment reversed by your bank after a dispute"

# How far along a dispute is, to order two events Stripe made in the same second. An inquiry
# (warning_*) may turn into a chargeback (needs_response); closed is the end.
_PROGRESS = {
    Status.WARNING_NEEDS_RESPONSE: 0,
    Status.WARNING_UNDER_REVIEW: 1,
    Status.NEEDS_RESPONSE: 2,
    Status.UNDER_REVIEW: 3,
    Status.WARNING_CLOSED: 4,
    Status.WON: 4,
    Status.LOST: 4,
}
# Invoices a lost dispute opens again: the money they were paid with is gone.
_REOPENED = (Invoice.Status.PAID, Invoice.Status.UNCOLLECTIBLE, Invoice.Status.OPEN)


def dispute_event_apply(*, event: dict[str, Any], now: datetime) -> str:
    """Apply a verified `charge.dispute.*` event (caller's transaction); the outcome, as the
    stored event records it.

    The payment is matched by the dispute's PaymentIntent (`Payment.processor_id`) and
    locked, which also serialises the events of one dispute. An unknown PaymentIntent is
    "unknown payment": stored by the caller, nothing else.
    """
    dispute = event["data"]["object"]
    problem = _malformed(dispute)
    if problem:
        return f"ignored: {problem}"
    payment = _payment_for(dispute["payment_intent"])
    if payment is None:
        return "unknown payment"
    if str(dispute["currency"]).upper() != payment.currency.upper():
        logger.error("Dispute %s is not in the currency of payment %s", dispute["id"], payment.pk)
        return f"needs review: currency differs from payment {payment.pk}"
    if dispute["amount"] > payment.amount:
        logger.error("Dispute %s is for more than payment %s", dispute["id"], payment.pk)
        return f"needs review: disputed amount exceeds payment {payment.pk}"
    event_created = _moment(event.get("created")) or now
    record = (
        Dispute.objects.select_for_update(of=("self",))
        .select_related("invoice", "organisation")
        .filter(processor_id=dispute["id"])
        .first()
    )
    if record is None:
        record = _opened(dispute, payment, event_created=event_created, now=now)
        outcome = f"dispute {record.status}: payment {payment.pk}, invoice {payment.invoice.number}"
    else:
        ignored = _stale(record, dispute["status"], event_created)
        if ignored:
            return ignored
        outcome = _moved(record, dispute, event_created=event_created, now=now)
    if record.status == Status.LOST and record.lost_applied_at is None:
        return _lost(record, payment, now=now)
    return outcome


def _malformed(dispute: Any) -> str:
    """What makes the event's object unusable as a Dispute, or ""."""
    if not isinstance(dispute, dict):
        return "not a Dispute"
    if not (isinstance(dispute.get("id"), str) and dispute["id"].startswith("dp_")):
        return "not a Dispute"
    if dispute.get("status") not in Status.values:
        return f"unknown dispute status {str(dispute.get('status'))[:40]!r}"
    amount = dispute.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return "no disputed amount"
    if not isinstance(dispute.get("currency"), str) or not dispute["currency"]:
        return "no currency"
    if not isinstance(dispute.get("payment_intent"), str) or not dispute["payment_intent"]:
        return "no PaymentIntent"
    return ""


def _payment_for(payment_intent_id: str) -> Payment | None:
    """Our card payment with this PaymentIntent, locked, or None."""
    return (
        Payment.objects.select_for_update(of=("self",))
        .select_related("invoice", "organisation")
        .filter(processor_id=payment_intent_id, method_kind=PaymentMethodKind.CARD)
        .order_by("pk")
        .first()
    )


def _moment(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return datetime.fromtimestamp(value, tz=UTC)


def _opened(dispute: dict, payment: Payment, *, event_created: datetime, now: datetime) -> Dispute:
    status = dispute["status"]
    opened_at = _moment(dispute.get("created")) or event_created
    record = Dispute.objects.create(
        processor_id=dispute["id"],
        organisation_id=payment.organisation_id,
        payment=payment,
        invoice_id=payment.invoice_id,
        amount=dispute["amount"],
        currency=payment.currency,
        reason=str(dispute.get("reason") or "")[:64],
        status=status,
        opened_at=opened_at,
        closed_at=event_created if status in Dispute.CLOSED else None,
        event_created=event_created,
    )
    if payment.disputed_at is None:
        payment.disputed_at = opened_at
        payment.save(update_fields=["disputed_at"])
    audit_record(
        organisation=payment.organisation,
        actor=SYSTEM,
        action="billing.dispute_opened",
        target=payment.invoice,
        target_label=f"{payment.invoice.number}: {record.processor_id}",
        changes={
            "dispute": {"old": None, "new": status},
            "amount": {"old": None, "new": format_money(record.amount, record.currency)},
            "reason": {"old": None, "new": record.reason},
        },
        now=now,
    )
    logger.warning(
        "Payment %s (invoice %s) disputed: %s, %s",
        payment.pk,
        payment.invoice.number,
        record.processor_id,
        record.reason,
        extra={"organisation_id": payment.organisation_id, "invoice_id": payment.invoice_id},
    )
    return record


def _stale(record: Dispute, status: str, event_created: datetime) -> str:
    """Why an event about a dispute we have changes nothing, or ""."""
    if record.status in Dispute.CLOSED:
        return f"ignored: dispute already {record.status}"
    if event_created < record.event_created:
        return "ignored: older than the last event applied"
    if event_created == record.event_created and _PROGRESS[status] < _PROGRESS[record.status]:
        return "ignored: older than the last event applied"
    return ""


def _moved(record: Dispute, dispute: dict, *, event_created: datetime, now: datetime) -> str:
    was = record.status
    record.status = dispute["status"]
    record.amount = dispute["amount"]
    record.reason = str(dispute.get("reason") or record.reason)[:64]
    record.event_created = event_created
    fields = ["status", "amount", "reason", "event_created"]
    if record.status in Dispute.CLOSED:
        record.closed_at = event_created
        fields.append("closed_at")
    record.save(update_fields=fields)
    if record.status in Dispute.CLOSED:
        audit_record(
            organisation=record.organisation,
            actor=SYSTEM,
            action="billing.dispute_closed",
            target=record.invoice,
            target_label=f"{record.invoice.number}: {record.processor_id}",
            changes={"dispute": {"old": was, "new": record.status}},
            now=now,
        )
    return f"dispute {record.status}: invoice {record.invoice.number}"


def _lost(record: Dispute, payment: Payment, *, now: datetime) -> str:
    """The bank took the money back: the invoice owes it again (caller's transaction,
    payment and dispute locked)."""
    invoice = (
        Invoice.objects.select_for_update(of=("self",))
        .select_related("organisation", "subscription")
        .get(pk=payment.invoice_id)
    )
    if payment.status != Payment.Status.SUCCEEDED or invoice.status not in _REOPENED:
        logger.error(
            "Dispute %s lost, but payment %s is %s and invoice %s is %s: needs review",
            record.processor_id,
            payment.pk,
            payment.status,
            invoice.number,
            invoice.status,
            extra={"organisation_id": invoice.organisation_id, "invoice_id": invoice.pk},
        )
        return (
            f"needs review: dispute lost, but payment {payment.pk} is {payment.status} and "
            f"invoice {invoice.number} is {invoice.status}"
        )
    record.lost_applied_at = now
    record.save(update_fields=["lost_applied_at"])
    payment.status = Payment.Status.CHARGED_BACK
    payment.save(update_fields=["status"])
    was = {"status": invoice.status, "amount_paid": invoice.amount_paid}
    # Never below zero: what was credited or refunded already is not taken twice.
    invoice.amount_paid = max(invoice.amount_paid - record.amount, 0)
    invoice.status = Invoice.Status.OPEN
    invoice.paid_at = None
    invoice.closed_at = None
    invoice.save(update_fields=["amount_paid", "status", "paid_at", "closed_at"])
    amount = format_money(record.amount, record.currency)
    case = None
    if invoice.subscription_id:
        case = dunning_open(
            subscription=invoice.subscription,
            started_at=now,
            now=now,
            result=f"{DISPUTE_LOST_RESULT}: {amount} for invoice {invoice.number}",
            attempts=0,
        )
    audit_record(
        organisation=invoice.organisation,
        actor=SYSTEM,
        action="billing.dispute_lost",
        target=invoice,
        target_label=f"{invoice.number}: {record.processor_id}",
        changes={
            "status": {"old": was["status"], "new": invoice.status},
            "amount_paid": {"old": was["amount_paid"], "new": invoice.amount_paid},
            "payment": {"old": Payment.Status.SUCCEEDED, "new": Payment.Status.CHARGED_BACK},
        },
        now=now,
    )
    _email_lost(record, invoice, case)
    chased = "failed-payment schedule" if case is not None else "no dunning: subscription ended"
    return (
        f"lost: invoice {invoice.number} open again, "
        f"{format_money(invoice.amount_due, invoice.currency)} due ({chased})"
    )


def _email_lost(record: Dispute, invoice: Invoice, case: DunningCase | None) -> None:
    organisation = invoice.organisation
    by_card = (
        invoice.subscription is not None
        and invoice.subscription.payment_method_kind == PaymentMethodKind.CARD
    )
    email_send(
        template="dispute_lost",
        to=billing_recipients(organisation=organisation),
        context={
            "invoice": invoice,
            "dispute": record,
            "amount_due": invoice.amount_due,
            "chased": case is not None,
            "by_card": by_card,
            "retry_at": step_due_at(case, Step.DAY_3) if case else None,
            "suspension_at": step_due_at(case, Step.DAY_14) if case else None,
            "payment_method_url": absolute_url("billing:payment_method", organisation.slug),
        },
        organisation=organisation,
    )


# Reads for ops -------------------------------------------------------------------------------


def disputes_of_subscription(subscription: Subscription) -> QuerySet[Dispute]:
    """The disputes of a subscription's invoices, newest first (the admin timeline)."""
    return Dispute.objects.filter(invoice__subscription=subscription).select_related("invoice")


def dispute_timeline(dispute: Dispute) -> list[tuple[datetime, str]]:
    """What happened to a dispute, as (when, what) in order: opened, closed, invoice open
    again."""
    amount = format_money(dispute.amount, dispute.currency)
    reason = dispute.reason.replace("_", " ") or "no reason given"
    rows = [
        (
            dispute.opened_at,
            f"{dispute.processor_id} opened on {dispute.invoice.number}: {amount}, {reason}",
        )
    ]
    if dispute.closed_at is not None:
        rows.append(
            (dispute.closed_at, f"{dispute.processor_id} closed: {dispute.get_status_display()}")
        )
    if dispute.lost_applied_at is not None:
        rows.append(
            (
                dispute.lost_applied_at,
                f"{DISPUTE_LOST_RESULT}: invoice {dispute.invoice.number} open again",
            )
        )
    return rows
