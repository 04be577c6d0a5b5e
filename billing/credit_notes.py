"""Credit notes: the one way an issued invoice is corrected
(docs/architecture.md#decision-credit-notes-and-the-customer-balance).

An invoice never changes. A credit note beside it credits the whole invoice, chosen lines, or
an amount split over the lines and their tax in proportion, never more than the invoice has
left to credit. Its outcome says where the money goes: back to the card (a Stripe refund),
to the customer balance, refunded outside (bank transfer or PO, with its reference), or off
what is still owed on an open invoice (one credited in full is settled, never charged).

Numbers are gapless per year (CN-YYYY-NNNNNN) under a row lock, as invoice numbers are; the
PDF is rendered once at issue and stored. A refund is a Refund row committed first (its id
gives the idempotency key), then Stripe is asked; one Stripe did not confirm leaves the credit
note "refund pending" and the charge job tries again with the same key.
"""

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Sum

from accounts.audit import Actor, audit_record
from accounts.emails import email_send
from accounts.selectors import billing_recipients
from billing import gateway
from billing.balance import balance_credit_from_note
from billing.documents import invoice_url
from billing.drafts import invoice_year
from billing.models import (
    CreditNote,
    CreditNoteLine,
    CreditNoteSequence,
    Invoice,
    InvoiceLine,
    Payment,
    Refund,
)
from billing.payments import MANUAL_KEY, invoice_settle
from billing.pdf import credit_note_pdf_bytes
from core.errors import ServiceError
from core.links import absolute_url
from core.money import format_money, minimum_charge, split_in_proportion
from core.observability import log_context
from subscriptions.models import PaymentMethodKind

logger = logging.getLogger(__name__)

Outcome = CreditNote.Outcome
Reason = CreditNote.Reason

# What ops choose in admin; "refunded in Stripe" is recorded from Stripe, never typed.
OPS_OUTCOMES = (Outcome.REFUND, Outcome.BALANCE, Outcome.REFUNDED_OUTSIDE, Outcome.REDUCE_DUE)
OPS_REASONS = tuple(reason for reason in Reason if reason != Reason.REFUNDED_IN_STRIPE)
# Outcomes that give money back (to the card, the balance, or outside): never more than
# was paid for the invoice.
MONEY_BACK = (Outcome.REFUND, Outcome.BALANCE, Outcome.REFUNDED_OUTSIDE, Outcome.REFUNDED_IN_STRIPE)


@dataclass(frozen=True)
class Credit:
    """What a credit note credits of one invoice line (unsaved)."""

    invoice_line: InvoiceLine | None
    description: str
    amount: int
    tax_amount: int

    @property
    def total(self) -> int:
        return self.amount + self.tax_amount


@dataclass(frozen=True)
class LineLeft:
    """An invoice line with what is left to credit of it, before and of tax."""

    line: InvoiceLine
    amount: int
    tax_amount: int


# What is left to credit ---------------------------------------------------------------------


def lines_left(invoice: Invoice) -> list[LineLeft]:
    """Each line of the invoice with what credit notes have not credited yet. The invoice's
    tax (computed on its subtotal) is shared over its lines in proportion to their amounts."""
    lines = list(invoice.lines.order_by("position"))
    taxes = split_in_proportion(invoice.tax_amount, [max(line.amount, 0) for line in lines])
    credited = {
        row["invoice_line"]: (row["amount"] or 0, row["tax"] or 0)
        for row in CreditNoteLine.objects.filter(invoice_line__invoice=invoice)
        .values("invoice_line")
        .annotate(amount=Sum("amount"), tax=Sum("tax_amount"))
    }
    left = []
    for line, tax in zip(lines, taxes, strict=True):
        amount_done, tax_done = credited.get(line.pk, (0, 0))
        left.append(
            LineLeft(line=line, amount=line.amount - amount_done, tax_amount=tax - tax_done)
        )
    return left


def _credit_whole(left: list[LineLeft]) -> list[Credit]:
    return [_credit(item, item.amount, item.tax_amount) for item in left]


def _credit_lines(left: list[LineLeft], line_ids: list[int]) -> list[Credit]:
    chosen = {int(pk) for pk in line_ids}
    known = {item.line.pk for item in left}
    if not chosen or chosen - known:
        raise ServiceError("Choose lines of this invoice to credit.", field="lines")
    credits = [
        _credit(item, item.amount, item.tax_amount) for item in left if item.line.pk in chosen
    ]
    if not any(credit.total for credit in credits):
        raise ServiceError(
            "The chosen lines are credited in full already: nothing was issued.", field="lines"
        )
    return credits


def _credit_amount(left: list[LineLeft], amount: int, currency: str) -> list[Credit]:
    """`amount` (tax included) split over every line and its tax in proportion to what is
    left of them, so a later credit of the rest comes out exact."""
    whole = sum(item.amount + item.tax_amount for item in left)
    if amount > whole:
        raise _too_much(amount, whole, currency)
    weights = []
    for item in left:
        weights += [item.amount, item.tax_amount]
    parts = split_in_proportion(amount, weights)
    return [_credit(item, parts[2 * i], parts[2 * i + 1]) for i, item in enumerate(left)]


def _credit(item: LineLeft, amount: int, tax_amount: int) -> Credit:
    return Credit(
        invoice_line=item.line,
        description=item.line.description,
        amount=amount,
        tax_amount=tax_amount,
    )


def _too_much(amount: int, left: int, currency: str) -> ServiceError:
    return ServiceError(
        f"Only {format_money(left, currency)} is left to credit on this invoice; "
        f"{format_money(amount, currency)} is more. Nothing was issued.",
        field="amount",
    )


# Issuing --------------------------------------------------------------------------------------


def credit_note_issue(
    *,
    invoice: Invoice,
    actor: Actor,
    reason: str,
    outcome: str,
    now: datetime,
    note: str = "",
    amount: int | None = None,
    line_ids: list[int] | None = None,
    reference: str = "",
) -> CreditNote:
    """Ops issue a credit note on an invoice (Django admin, Billing staff).

    What it credits: `amount` (tax included, split in proportion), or the lines `line_ids`,
    or else everything left. Refused, with nothing written, when it is more than is left to
    credit, more than was paid (money back), more than is still owed (reduce the amount due),
    or when a refund to the card is asked for an invoice not paid by card through Stripe.
    A refund is sent to Stripe once the credit note is committed.
    """
    reason, outcome, note, reference = _checked_request(
        actor=actor, reason=reason, outcome=outcome, note=note, reference=reference
    )
    if amount is not None and line_ids:
        raise ServiceError("Credit an amount or chosen lines, not both.", field="amount")
    if amount is not None and (
        isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0
    ):
        raise ServiceError("The amount must be more than zero.", field="amount")
    with transaction.atomic():
        invoice = (
            Invoice.objects.select_for_update(of=("self",))
            .select_related("organisation")
            .get(pk=invoice.pk)
        )
        if invoice.status == Invoice.Status.VOID:
            raise ServiceError(f"Invoice {invoice.number} is void: there is nothing to credit.")
        if outcome == Outcome.REDUCE_DUE and invoice.status != Invoice.Status.OPEN:
            raise ServiceError(
                f'"Reduce the amount due" is for open invoices; {invoice.number} is '
                f"{invoice.get_status_display().lower()}.",
                field="outcome",
            )
        left = lines_left(invoice)
        if amount is not None:
            credits = _credit_amount(left, amount, invoice.currency)
        elif line_ids:
            credits = _credit_lines(left, line_ids)
        else:
            credits = _credit_whole(left)
        credits = [credit for credit in credits if credit.total]
        total = sum(credit.total for credit in credits)
        if total <= 0:
            raise ServiceError(
                f"Invoice {invoice.number} is credited in full already: nothing was issued."
            )
        if total > invoice.amount_uncredited:
            raise _too_much(total, invoice.amount_uncredited, invoice.currency)
        payment = _check_outcome(invoice, outcome=outcome, total=total)
        credit_note = _issue(
            invoice,
            credits,
            reason=reason,
            outcome=outcome,
            note=note,
            reference=reference,
            actor=actor,
            now=now,
        )
        refund = None
        if outcome == Outcome.REFUND:
            refund = _refund_add(credit_note, payment, now=now)
    if refund is not None:
        refund_send(refund=refund, now=now)
        credit_note.refresh_from_db()
    return credit_note


def _checked_request(
    *, actor: Actor, reason: str, outcome: str, note: str, reference: str
) -> tuple[str, str, str, str]:
    if actor.user is None:
        raise ServiceError("A credit note is issued by a person, not by the system.")
    if reason not in OPS_REASONS:
        raise ServiceError("Choose the reason for the credit note.", field="reason")
    if outcome not in OPS_OUTCOMES:
        raise ServiceError("Choose what happens to the money.", field="outcome")
    note = (note or "").strip()
    if reason == Reason.OTHER and not note:
        raise ServiceError('Say what the reason is when it is "Other".', field="note")
    reference = (reference or "").strip()
    if outcome == Outcome.REFUNDED_OUTSIDE and not reference:
        raise ServiceError(
            "Give the reference of the bank transfer or PO refund.", field="reference"
        )
    if len(note) > 500 or len(reference) > 120:
        raise ServiceError("The note or the reference is too long.", field="note")
    return reason, outcome, note, reference


def money_back_left(invoice: Invoice) -> int:
    """What may still go back to the customer for the invoice: what was paid (money and
    balance applied) less what credit notes gave back already."""
    given_back = invoice.amount_credited - invoice.amount_credited_unpaid
    return invoice.amount_paid + invoice.credit_applied - given_back


def _check_outcome(invoice: Invoice, *, outcome: str, total: int) -> Payment | None:
    """Refuse an outcome the invoice cannot take (invoice locked); the card payment to
    refund, for a refund."""
    money = format_money(total, invoice.currency)
    if outcome == Outcome.REDUCE_DUE:
        _check_reduce_due(invoice, total)
        return None
    left = money_back_left(invoice)
    if total > left:
        raise ServiceError(
            f"{format_money(left, invoice.currency)} of invoice {invoice.number} can still go "
            f"back to the customer (what was paid, less what was given back); {money} is "
            "more. Nothing was issued."
            + (
                ' To lower what is still owed, choose "Reduce the amount due".'
                if invoice.status == Invoice.Status.OPEN
                else ""
            ),
            field="amount",
        )
    if outcome != Outcome.REFUND:
        return None
    payment = _card_payment(invoice)
    if payment is None:
        raise ServiceError(
            f"Invoice {invoice.number} was not paid by card through Stripe, so there is no "
            'charge to refund. Choose "Refunded outside" and give the bank transfer or PO '
            "refund's reference.",
            field="outcome",
        )
    refundable = payment.amount - _refunded(payment)
    if total > refundable:
        raise ServiceError(
            f"{format_money(refundable, invoice.currency)} of the card payment can still be "
            f"refunded; {money} is more. Nothing was issued.",
            field="amount",
        )
    return payment


def _check_reduce_due(invoice: Invoice, total: int) -> None:
    money = format_money(total, invoice.currency)
    if total > invoice.amount_due:
        raise ServiceError(
            f"{format_money(invoice.amount_due, invoice.currency)} is still owed on "
            f"{invoice.number}; {money} is more. Nothing was issued.",
            field="amount",
        )
    if invoice.payments.filter(
        status__in=(Payment.Status.PENDING, Payment.Status.REQUIRES_ACTION)
    ).exists():
        raise ServiceError(
            f"A charge of {invoice.number} is under way or waits for the customer's bank: "
            "try again once it has ended. Nothing was issued."
        )
    rest = invoice.amount_due - total
    floor = minimum_charge(invoice.currency)
    if invoice.payment_method_kind == PaymentMethodKind.CARD and 0 < rest < floor:
        raise ServiceError(
            f"That would leave {format_money(rest, invoice.currency)} to charge, less than "
            f"the smallest card charge ({format_money(floor, invoice.currency)}). Credit the "
            f"whole {format_money(invoice.amount_due, invoice.currency)}, or leave at least "
            f"{format_money(floor, invoice.currency)}. Nothing was issued.",
            field="amount",
        )


def _card_payment(invoice: Invoice) -> Payment | None:
    """The invoice's successful card payment through Stripe, locked."""
    return (
        Payment.objects.select_for_update()
        .filter(
            invoice=invoice,
            method_kind=PaymentMethodKind.CARD,
            status=Payment.Status.SUCCEEDED,
        )
        .exclude(processor_id="")
        .exclude(idempotency_key__contains=MANUAL_KEY)
        .first()
    )


def _refunded(payment: Payment) -> int:
    """What refunds took, or are taking, from the payment."""
    return (
        payment.refunds.exclude(status=Refund.Status.FAILED).aggregate(total=Sum("amount"))["total"]
        or 0
    )


def _issue(
    invoice: Invoice,
    credits: list[Credit],
    *,
    reason: str,
    outcome: str,
    note: str,
    reference: str,
    actor: Actor,
    now: datetime,
) -> CreditNote:
    """Number and store the credit note with its lines, move the invoice's figures, carry
    out a balance or reduce-due outcome, render the PDF, audit and email (caller's
    transaction, invoice locked)."""
    subtotal = sum(credit.amount for credit in credits)
    tax = sum(credit.tax_amount for credit in credits)
    credit_note = CreditNote.objects.create(
        organisation_id=invoice.organisation_id,
        invoice=invoice,
        number=credit_note_number_allocate(year=invoice_year(now)),
        reason=reason,
        note=note,
        outcome=outcome,
        status=CreditNote.Status.REFUND_PENDING
        if outcome == Outcome.REFUND
        else CreditNote.Status.ISSUED,
        currency=invoice.currency,
        subtotal=subtotal,
        tax_amount=tax,
        total=subtotal + tax,
        reference=reference,
        issued_at=now,
        created_by=actor.user,
    )
    CreditNoteLine.objects.bulk_create(
        [
            CreditNoteLine(
                credit_note=credit_note,
                position=position,
                invoice_line=credit.invoice_line,
                description=credit.description,
                amount=credit.amount,
                tax_amount=credit.tax_amount,
            )
            for position, credit in enumerate(credits, start=1)
        ]
    )
    if any(credit.invoice_line is not None for credit in credits):
        invoice.amount_credited += sum(c.total for c in credits if c.invoice_line is not None)
        fields = ["amount_credited"]
        if outcome == Outcome.REDUCE_DUE:
            invoice.amount_credited_unpaid += credit_note.total
            fields.append("amount_credited_unpaid")
        invoice.save(update_fields=fields)
        if outcome == Outcome.REDUCE_DUE and invoice.amount_due == 0:
            invoice_settle(invoice, now=now)
    if outcome == Outcome.BALANCE:
        balance_credit_from_note(credit_note=credit_note, now=now)
    credit_note.pdf = credit_note_pdf_bytes(credit_note=credit_note)
    credit_note.save(update_fields=["pdf"])
    audit_record(
        organisation=invoice.organisation,
        actor=actor,
        action="billing.credit_note_issued",
        target=invoice,
        target_label=invoice.number,
        changes={
            "credit_note": {"old": None, "new": credit_note.number},
            "amount": {"old": None, "new": format_money(credit_note.total, invoice.currency)},
            "outcome": {"old": None, "new": outcome},
            "reason": {"old": None, "new": f"{Reason(reason).label}{': ' + note if note else ''}"},
            **({"reference": {"old": None, "new": reference}} if reference else {}),
        },
        now=now,
    )
    _email_credit_note(credit_note)
    return credit_note


def credit_note_number_allocate(*, year: int) -> str:
    """The next credit-note number of `year`, CN-2026-000001. The sequence row stays locked
    until the caller's transaction ends: no gaps, no duplicates."""
    CreditNoteSequence.objects.bulk_create([CreditNoteSequence(year=year)], ignore_conflicts=True)
    sequence = CreditNoteSequence.objects.select_for_update().get(year=year)
    sequence.last_number += 1
    sequence.save(update_fields=["last_number"])
    return f"CN-{year}-{sequence.last_number:06d}"


def credit_note_url(credit_note: CreditNote) -> str:
    return absolute_url(
        "billing:credit_note_pdf", credit_note.invoice.organisation.slug, credit_note.number
    )


def _email_credit_note(credit_note: CreditNote) -> None:
    invoice = credit_note.invoice
    email_send(
        template="credit_note_issued",
        to=billing_recipients(organisation=invoice.organisation),
        context={
            "credit_note": credit_note,
            "invoice": invoice,
            "pdf_url": credit_note_url(credit_note),
            "invoices_url": invoice_url(invoice),
        },
        organisation=invoice.organisation,
    )


# Refunds to the card ------------------------------------------------------------------------


def _refund_add(credit_note: CreditNote, payment: Payment, *, now: datetime) -> Refund:
    return Refund.objects.create(
        organisation_id=credit_note.organisation_id,
        credit_note=credit_note,
        payment=payment,
        payment_intent_id=payment.processor_id,
        amount=credit_note.total,
        currency=credit_note.currency,
        idempotency_key=f"credit-note-{credit_note.public_id}-refund",
        created_at=now,
    )


def refund_send(*, refund: Refund, now: datetime) -> Refund:
    """Ask Stripe for a pending refund, with its key; record how it ended. Unanswered or
    refused, it stays pending (its credit note "refund pending") for the charge job."""
    with transaction.atomic():
        refund = Refund.objects.select_for_update().get(pk=refund.pk)
        if refund.status != Refund.Status.PENDING:
            return refund
        refund.attempts += 1
        refund.save(update_fields=["attempts"])
    try:
        result = gateway.refund_create(
            payment_intent_id=refund.payment_intent_id,
            amount=refund.amount,
            idempotency_key=refund.idempotency_key,
            metadata={"credit_note": refund.credit_note.number, "refund": str(refund.pk)},
        )
    except gateway.PaymentError as error:
        logger.warning(
            "Refund %s of %s not made (%s): %s; the charge job tries again",
            refund.pk,
            refund.payment_intent_id,
            error.code,
            error.message,
            extra={"organisation_id": refund.organisation_id},
        )
        Refund.objects.filter(pk=refund.pk, status=Refund.Status.PENDING).update(
            failure_message=error.message[:255]
        )
        refund.refresh_from_db()
        return refund
    return refund_succeeded(refund=refund, processor_id=result.refund_id, now=now)


def refund_succeeded(*, refund: Refund, processor_id: str, now: datetime) -> Refund:
    """Stripe made the refund: the refund and its credit note are done. Twice changes nothing."""
    with transaction.atomic():
        refund = Refund.objects.select_for_update().get(pk=refund.pk)
        if refund.status == Refund.Status.SUCCEEDED:
            return refund
        refund.status = Refund.Status.SUCCEEDED
        refund.processor_id = processor_id
        refund.completed_at = now
        refund.failure_message = ""
        refund.save(update_fields=["status", "processor_id", "completed_at", "failure_message"])
        CreditNote.objects.filter(pk=refund.credit_note_id).update(
            status=CreditNote.Status.ISSUED, reference=processor_id
        )
    return refund


def refunds_retry_pending(*, now: datetime, limit: int = 200) -> int:
    """Send again the refunds Stripe has not confirmed (the charge job), oldest first, each
    with its own key; the number made now."""
    made = 0
    pending = Refund.objects.filter(status=Refund.Status.PENDING).select_related("credit_note")
    for refund in list(pending.order_by("created_at", "pk")[:limit]):
        with log_context(organisation_id=refund.organisation_id):
            try:
                refund = refund_send(refund=refund, now=now)
            except Exception:
                logger.exception("Could not send refund %s", refund.pk)
                continue
        made += refund.status == Refund.Status.SUCCEEDED
    return made
