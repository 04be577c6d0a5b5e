"""Credit notes (billing.credit_notes): amounts, outcomes, numbering, the PDF, the email, the
Stripe refund with its key, and what is refused with nothing written."""

import io
import threading

import pytest
from django.core import mail
from django.db import connection
from pypdf import PdfReader

from accounts.audit import Actor
from accounts.models import AuditEvent
from billing import gateway
from billing.balance import balance_of
from billing.credit_notes import credit_note_issue, lines_left, refunds_retry_pending
from billing.models import BalanceEntry, CreditNote, Invoice, Payment, Refund
from billing.payments import payment_record_manual
from core.errors import ServiceError
from subscriptions.models import PaymentMethodKind
from tests.billing.helpers import START

pytestmark = pytest.mark.django_db

Outcome = CreditNote.Outcome
Reason = CreditNote.Reason


def issue(invoice, ops, **fields):
    fields.setdefault("reason", Reason.SERVICE_ISSUE)
    fields.setdefault("outcome", Outcome.BALANCE)
    return credit_note_issue(invoice=invoice, actor=Actor(user=ops), now=START, **fields)


def pdf_text(credit_note) -> str:
    reader = PdfReader(io.BytesIO(bytes(credit_note.pdf)))
    return "\n".join(page.extract_text() for page in reader.pages)


def test_partial_refund_to_the_card_is_made_at_stripe_with_our_key(paid, ops, localstripe):
    credit_note = issue(paid, ops, amount=10_000, outcome=Outcome.REFUND, note="Outage on 3 Feb")

    assert credit_note.number == f"CN-{START.year}-000001"
    assert credit_note.status == CreditNote.Status.ISSUED
    assert credit_note.total == 10_000
    refund = credit_note.refunds.get()
    assert refund.status == Refund.Status.SUCCEEDED
    assert refund.idempotency_key == f"credit-note-{credit_note.public_id}-refund"
    payment = paid.payments.get(status=Payment.Status.SUCCEEDED)
    [at_stripe] = gateway.refunds_of(payment_intent_id=payment.processor_id)
    assert (at_stripe.refund_id, at_stripe.amount) == (refund.processor_id, 10_000)
    assert at_stripe.metadata["credit_note"] == credit_note.number
    paid.refresh_from_db()
    assert (paid.amount_credited, paid.status) == (10_000, Invoice.Status.PAID)


def test_the_pdf_names_the_invoice_the_parties_and_the_lines(paid, ops):
    credit_note = issue(paid, ops, amount=10_000)

    text = pdf_text(credit_note)
    assert "Credit note" in text
    assert credit_note.number in text
    assert paid.number in text
    assert paid.billing_details["company_name"] in text
    assert "Professional plan" in text
    assert "$100.00" in text
    assert "Added to your account balance" in text


def test_billing_recipients_get_an_email_with_the_pdf_link(paid, ops, committed):
    mail.outbox.clear()
    with committed():
        credit_note = issue(paid, ops, amount=10_000)

    messages = [m for m in mail.outbox if credit_note.number in m.subject]
    assert ["admin@acme.test"] in [m.to for m in messages]
    assert "$100.00" in messages[0].subject
    assert f"/settings/billing/credit-notes/{credit_note.number}/pdf/" in messages[0].body
    assert "added to your account balance" in messages[0].body


def test_the_whole_invoice_and_then_nothing_more(paid, ops):
    issue(paid, ops)
    paid.refresh_from_db()
    assert paid.amount_credited == paid.total
    assert balance_of(organisation=paid.organisation, currency="USD") == paid.total

    with pytest.raises(ServiceError, match="credited in full"):
        issue(paid, ops)
    with pytest.raises(ServiceError, match="left to credit"):
        issue(paid, ops, amount=1)
    assert CreditNote.objects.count() == 1


def test_crediting_more_than_is_left_is_refused_and_writes_nothing(paid, ops):
    issue(paid, ops, amount=40_000)

    with pytest.raises(ServiceError, match=r"Only \$582.77 is left to credit"):
        issue(paid, ops, amount=58_278)
    assert CreditNote.objects.count() == 1
    assert BalanceEntry.objects.count() == 1
    paid.refresh_from_db()
    assert paid.amount_credited == 40_000


def test_an_amount_is_split_over_lines_and_tax_and_the_rest_comes_out_exact(paid, ops):
    invoice = paid
    assert (invoice.subtotal, invoice.tax_amount) == (79_900, 18_377)

    first = issue(invoice, ops, amount=10_001)
    assert (first.subtotal, first.tax_amount, first.total) == (8_131, 1_870, 10_001)
    rest = issue(invoice, ops)
    assert rest.subtotal + first.subtotal == invoice.subtotal
    assert rest.tax_amount + first.tax_amount == invoice.tax_amount
    assert [left.amount + left.tax_amount for left in lines_left(invoice)] == [0]


def test_a_refund_on_an_invoice_paid_outside_stripe_points_to_refunded_outside(
    localstripe, org, admin, ops
):
    from tests.billing.factories import issued_invoice

    invoice = issued_invoice(organisation=org, payment_method_kind=PaymentMethodKind.BANK_TRANSFER)
    payment_record_manual(invoice=invoice, actor=Actor(user=ops), reference="BT-1", now=START)

    with pytest.raises(ServiceError, match="Refunded outside"):
        issue(invoice, ops, amount=1_000, outcome=Outcome.REFUND)
    assert not CreditNote.objects.exists()

    credit_note = issue(
        invoice, ops, amount=1_000, outcome=Outcome.REFUNDED_OUTSIDE, reference="BT-REFUND-7"
    )
    assert credit_note.reference == "BT-REFUND-7"
    assert "BT-REFUND-7" in pdf_text(credit_note)


def test_reduce_the_amount_due_settles_an_open_invoice_credited_in_full(
    localstripe, org, admin, ops
):
    from tests.billing.factories import issued_invoice

    invoice = issued_invoice(organisation=org, payment_method_kind=PaymentMethodKind.BANK_TRANSFER)
    with pytest.raises(ServiceError, match="can still go back"):
        issue(invoice, ops, amount=1_000, outcome=Outcome.BALANCE)

    issue(invoice, ops, amount=1_000, outcome=Outcome.REDUCE_DUE)
    invoice.refresh_from_db()
    assert invoice.amount_due == invoice.total - 1_000
    assert invoice.status == Invoice.Status.OPEN

    issue(invoice, ops, outcome=Outcome.REDUCE_DUE)
    invoice.refresh_from_db()
    assert (invoice.amount_due, invoice.status) == (0, Invoice.Status.PAID)
    assert not invoice.payments.exists()
    with pytest.raises(ServiceError, match="for open invoices"):
        issue(invoice, ops, amount=1, outcome=Outcome.REDUCE_DUE)


def test_reduce_due_may_not_leave_less_than_the_smallest_card_charge(paid, ops):
    from tests.billing.factories import issued_invoice

    # A number of its own: the card invoice above took the sequence's first.
    invoice = issued_invoice(organisation=paid.organisation, number="INV-2026-900001")
    with pytest.raises(ServiceError, match="smallest card charge"):
        issue(invoice, ops, amount=invoice.total - 10, outcome=Outcome.REDUCE_DUE)
    assert not CreditNote.objects.exists()


def test_bad_requests_are_refused_with_a_reason(paid, ops):
    with pytest.raises(ServiceError, match="reason"):
        issue(paid, ops, reason="because")
    with pytest.raises(ServiceError, match="what the reason is"):
        issue(paid, ops, reason=Reason.OTHER)
    with pytest.raises(ServiceError, match="reference"):
        issue(paid, ops, outcome=Outcome.REFUNDED_OUTSIDE)
    with pytest.raises(ServiceError, match="more than zero"):
        issue(paid, ops, amount=0)
    with pytest.raises(ServiceError, match="by a person"):
        credit_note_issue(
            invoice=paid, actor=Actor(user=None), reason="goodwill", outcome="balance", now=START
        )
    assert not CreditNote.objects.exists()


def test_the_issue_is_audited_with_its_reason(paid, ops):
    credit_note = issue(paid, ops, amount=500, reason=Reason.GOODWILL, note="Sorry")

    event = AuditEvent.objects.get(action="billing.credit_note_issued")
    assert event.changes["credit_note"]["new"] == credit_note.number
    assert event.changes["reason"]["new"] == "Goodwill: Sorry"


def test_a_refund_stripe_refuses_stays_pending_and_the_charge_job_retries_it(
    paid, ops, localstripe, monkeypatch
):
    real = gateway.refund_create

    def refused(**kwargs):
        raise gateway.GatewayUnavailable(gateway.UNAVAILABLE_MESSAGE, code="gateway_unavailable")

    monkeypatch.setattr(gateway, "refund_create", refused)
    credit_note = issue(paid, ops, amount=2_000, outcome=Outcome.REFUND)
    assert credit_note.status == CreditNote.Status.REFUND_PENDING
    refund = credit_note.refunds.get()
    assert (refund.status, refund.attempts) == (Refund.Status.PENDING, 1)

    monkeypatch.setattr(gateway, "refund_create", real)
    assert refunds_retry_pending(now=START) == 1
    assert refunds_retry_pending(now=START) == 0
    credit_note.refresh_from_db()
    assert credit_note.status == CreditNote.Status.ISSUED
    payment = paid.payments.get(status=Payment.Status.SUCCEEDED)
    assert [r.amount for r in gateway.refunds_of(payment_intent_id=payment.processor_id)] == [2_000]


def test_a_refund_retried_after_its_answer_was_lost_refunds_once(paid, ops, localstripe):
    credit_note = issue(paid, ops, amount=2_000, outcome=Outcome.REFUND)
    refund = credit_note.refunds.get()
    # Our record of the success is lost: the same key finds Stripe's refund again.
    Refund.objects.filter(pk=refund.pk).update(status=Refund.Status.PENDING, processor_id=None)
    refunds_retry_pending(now=START)
    payment = paid.payments.get(status=Payment.Status.SUCCEEDED)
    assert len(gateway.refunds_of(payment_intent_id=payment.processor_id)) == 1


@pytest.mark.django_db(transaction=True)
def test_two_ops_crediting_at_once_the_second_sees_what_is_left(paid, ops):
    barrier = threading.Barrier(2)
    results = []

    def credit():
        barrier.wait()
        try:
            results.append(issue(paid, ops, amount=60_000).number)
        except ServiceError as error:
            results.append(error.message)
        finally:
            connection.close()

    threads = [threading.Thread(target=credit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for r in results if r.startswith("CN-")) == 1
    assert any("left to credit" in r for r in results)
    paid.refresh_from_db()
    assert paid.amount_credited == 60_000


def test_a_credit_note_of_a_reverse_charge_invoice_carries_the_wording(localstripe, org, ops):
    from billing.tax import REVERSE_CHARGE_NOTE
    from tests.billing.factories import issued_invoice

    invoice = issued_invoice(
        organisation=org,
        payment_method_kind=PaymentMethodKind.BANK_TRANSFER,
        tax_rule="reverse_charge",
        tax_rate_bp=0,
        tax_note=REVERSE_CHARGE_NOTE,
    )
    payment_record_manual(invoice=invoice, actor=Actor(user=ops), reference="BT-2", now=START)

    credit_note = issue(
        invoice, ops, amount=1_000, outcome=Outcome.REFUNDED_OUTSIDE, reference="R-1"
    )

    assert (credit_note.subtotal, credit_note.tax_amount) == (1_000, 0)
    text = " ".join(pdf_text(credit_note).split())
    assert "Reverse charge: VAT to be accounted for by the recipient" in text
    assert "VAT 0%" in text
