"""Refunds made at Stripe (billing.stripe_refunds): a refund made in the Stripe dashboard becomes
a credit note "refunded in Stripe", by the `charge.refunded` webhook or the daily reconciliation,
once; our own refunds are only marked done; a double charge is refunded with "Refund this
charge" (billing.reconciliation.difference_resolve_refund). The stand-in refunds as Stripe does.

Webhook events are signed and posted here as Stripe would (tests/billing/test_webhooks.py), the
Charge in them read from localstripe after the refund; the last test has localstripe itself
deliver `charge.refunded` to a live server. localstripe stamps its objects with the real clock,
so the reconciliation tests live in real time (`clock`, as in test_reconciliation.py).
"""

import io
import threading
import time
from datetime import timedelta

import pytest
import stripe
from django.contrib.auth.models import Group
from django.core import mail
from django.db import connection
from django.utils import timezone
from pypdf import PdfReader

from accounts.audit import Actor
from accounts.models import AuditEvent
from accounts.selectors import billing_recipients
from billing import gateway
from billing.credit_notes import credit_note_issue, refunds_retry_pending
from billing.models import (
    CreditNote,
    Invoice,
    Payment,
    ReconciliationDifference,
    Refund,
    StripeEvent,
)
from billing.payments import payment_record_manual, payment_succeeded
from billing.reconciliation import (
    difference_resolve_record_payment,
    difference_resolve_refund,
    reconcile,
)
from billing.stripe_refunds import RefundedCharge, RefundOutcome, stripe_refund_record
from core.errors import ServiceError
from core.money import format_money
from devkit.stripe_standin import (
    REFUND_EVENTS,
    refund_in_dashboard,
    register_webhook,
    unregister_webhook,
)
from support.staff import READ_ONLY
from tests.accounts.factories import UserFactory
from tests.billing.helpers import subscribe
from tests.billing.test_webhooks import (
    RENEWAL,
    URL,
    deliver,
    event,
    renewal_invoice,
    timed_out_charge,
)

pytestmark = pytest.mark.django_db

REFUNDED = "charge.refunded"
DIFFERENCES = "/admin/billing/reconciliationdifference/"
Outcome = CreditNote.Outcome
Reason = CreditNote.Reason


@pytest.fixture
def clock():
    """(T, LATER): when our rows were made, and when reconciliation looks at them."""
    started = timezone.now().replace(microsecond=0)
    return started - timedelta(hours=1), started + timedelta(hours=1)


@pytest.fixture
def paid(localstripe, org, admin, clock):
    """Professional monthly, first invoice ($799.00 + 23% tax = $982.77) paid by Visa."""
    T, _ = clock
    invoice = subscribe(org, now=T)
    assert (invoice.status, invoice.total) == (Invoice.Status.PAID, 98_277)
    return invoice


def card_payment(invoice) -> Payment:
    return invoice.payments.get(status=Payment.Status.SUCCEEDED)


def charge_of(localstripe, payment_intent_id: str) -> dict:
    """The PaymentIntent's Charge as Stripe has it now, as a `charge.refunded` event carries it."""
    charge = localstripe.v1.payment_intents.retrieve(payment_intent_id)["latest_charge"]
    if isinstance(charge, str):  # localstripe expands it unasked
        charge = localstripe.v1.charges.retrieve(charge)
    return charge.to_dict()


def refunded_event(localstripe, payment_intent_id: str, **fields) -> dict:
    return event(REFUNDED, {**charge_of(localstripe, payment_intent_id), **fields})


def pdf_text(credit_note) -> str:
    reader = PdfReader(io.BytesIO(bytes(credit_note.pdf)))
    return "\n".join(page.extract_text() for page in reader.pages)


def open_differences():
    return list(
        ReconciliationDifference.objects.filter(resolved_at__isnull=True).values_list(
            "kind", "processor_id", "payment_id", "invoice_id"
        )
    )


def counts(result) -> tuple[int, int, int, int]:
    return (result.new, result.still_open, result.closed, result.refunds_recorded)


# The stand-in refunds as Stripe does -------------------------------------------------------------


def test_the_stand_in_refuses_more_than_is_left_of_the_charge(paid, localstripe):
    intent_id = card_payment(paid).processor_id

    with pytest.raises(stripe.InvalidRequestError) as too_much:
        refund_in_dashboard(intent_id, 98_278)
    assert too_much.value.http_status == 400
    assert too_much.value.user_message == (
        "Refund amount ($982.78) is greater than unrefunded amount on charge ($982.77)"
    )
    assert too_much.value.error.param == "amount"

    refund_in_dashboard(intent_id, 90_000)
    with pytest.raises(stripe.InvalidRequestError, match=r"\(\$82.78\) is greater .* \(\$82.77\)"):
        refund_in_dashboard(intent_id, 8_278)
    # Without an amount: what is left, as on Stripe (not the whole charge again).
    rest = refund_in_dashboard(intent_id)
    assert localstripe.v1.refunds.retrieve(rest)["amount"] == 8_277
    assert charge_of(localstripe, intent_id)["amount_refunded"] == 98_277

    with pytest.raises(stripe.InvalidRequestError) as nothing_left:
        refund_in_dashboard(intent_id, 1)
    assert (nothing_left.value.code, nothing_left.value.user_message) == (
        "charge_already_refunded",
        f"Charge {charge_of(localstripe, intent_id)['id']} has already been refunded.",
    )
    # Our gateway gets Stripe's refusal as a PaymentError; nothing was refunded.
    with pytest.raises(gateway.PaymentError) as refused:
        gateway.refund_create(
            payment_intent_id=intent_id, amount=1, idempotency_key="refund-test-1", metadata={}
        )
    assert refused.value.code == "charge_already_refunded"
    assert len(gateway.refunds_of(payment_intent_id=intent_id)) == 2


def test_the_charge_refunded_event_carries_the_charge_and_its_refunds(paid, localstripe):
    intent_id = card_payment(paid).processor_id
    refund_id = refund_in_dashboard(intent_id, 10_000)

    charge = charge_of(localstripe, intent_id)
    assert (
        charge["payment_intent"],
        charge["amount"],
        charge["amount_refunded"],
        charge["refunded"],
        charge["currency"],
    ) == (intent_id, 98_277, 10_000, False, "usd")
    [listed] = charge["refunds"]["data"]
    assert (listed["id"], listed["amount"], listed["metadata"], listed["status"]) == (
        refund_id,
        10_000,
        {},
        "succeeded",
    )
    assert listed["payment_intent"] == intent_id
    assert isinstance(listed["created"], int)


# The webhook --------------------------------------------------------------------------------------


def test_a_dashboard_refund_becomes_a_credit_note_refunded_in_stripe(
    client, paid, localstripe, committed
):
    payment = card_payment(paid)
    refund_id = refund_in_dashboard(payment.processor_id, 10_001)
    mail.outbox.clear()

    with committed():
        response = deliver(client, refunded_event(localstripe, payment.processor_id))

    credit_note = CreditNote.objects.get()
    assert response.json() == {
        "status": "processed",
        "outcome": f"{refund_id}: credit note issued {credit_note.number}",
    }
    assert (credit_note.reason, credit_note.outcome, credit_note.status) == (
        Reason.REFUNDED_IN_STRIPE,
        Outcome.REFUNDED_IN_STRIPE,
        CreditNote.Status.ISSUED,
    )
    # Split over the line and its tax as an amount credit note is.
    assert (credit_note.subtotal, credit_note.tax_amount, credit_note.total) == (
        8_131,
        1_870,
        10_001,
    )
    assert (credit_note.reference, credit_note.created_by) == (refund_id, None)
    [line] = credit_note.lines.all()
    assert (line.invoice_line, line.amount, line.tax_amount) == (paid.lines.get(), 8_131, 1_870)
    refund = Refund.objects.get()
    assert (
        refund.credit_note,
        refund.payment,
        refund.status,
        refund.processor_id,
        refund.amount,
        refund.payment_intent_id,
    ) == (credit_note, payment, "succeeded", refund_id, 10_001, payment.processor_id)
    paid.refresh_from_db()
    assert (paid.amount_credited, paid.status) == (10_001, Invoice.Status.PAID)
    assert "Refunded to the card that paid invoice" in pdf_text(credit_note)
    messages = [m for m in mail.outbox if credit_note.number in m.subject]
    assert sorted(m.to[0] for m in messages) == sorted(
        billing_recipients(organisation=paid.organisation)
    )
    assert ["admin@acme.test"] in [m.to for m in messages]
    message = messages[0]
    assert "$100.01" in message.subject
    assert "The amount was refunded to your card." in message.body
    assert AuditEvent.objects.get(action="billing.credit_note_issued").actor is None
    assert open_differences() == []


def test_a_redelivered_or_later_event_records_the_refund_once(client, paid, localstripe):
    intent_id = card_payment(paid).processor_id
    first_id = refund_in_dashboard(intent_id, 10_000)
    sent = refunded_event(localstripe, intent_id)
    deliver(client, sent)

    assert deliver(client, sent).json() == {"status": "duplicate"}
    # A second refund: Stripe's next event lists both; the first is not recorded again.
    second_id = refund_in_dashboard(intent_id, 5_000)
    later = deliver(client, refunded_event(localstripe, intent_id))
    numbers = list(CreditNote.objects.values_list("number", flat=True))
    assert len(numbers) == 2
    outcome = later.json()["outcome"]
    assert f"{second_id}: credit note issued {numbers[1]}" in outcome
    assert f"{first_id}: already recorded" in outcome
    # Out of order: the first event, redelivered late under another id, changes nothing.
    assert deliver(client, {**sent, "id": "evt_late"}).json()["outcome"] == (
        f"{first_id}: already recorded"
    )
    assert list(Refund.objects.order_by("amount").values_list("processor_id", "amount")) == [
        (second_id, 5_000),
        (first_id, 10_000),
    ]
    paid.refresh_from_db()
    assert paid.amount_credited == 15_000
    assert StripeEvent.objects.filter(type=REFUNDED).count() == 3


def test_our_own_refund_and_its_webhook_make_one_credit_note(client, paid, localstripe, ops):
    credit_note = credit_note_issue(
        invoice=paid,
        actor=Actor(user=ops),
        reason=Reason.SERVICE_ISSUE,
        outcome=Outcome.REFUND,
        amount=10_000,
        now=timezone.now(),
    )
    refund = credit_note.refunds.get()
    assert refund.status == "succeeded"

    response = deliver(client, refunded_event(localstripe, refund.payment_intent_id))
    assert response.json()["outcome"] == f"{refund.processor_id}: our refund, done"
    assert CreditNote.objects.count() == 1
    assert Refund.objects.count() == 1
    paid.refresh_from_db()
    assert paid.amount_credited == 10_000


def test_the_webhook_completes_our_refund_whose_answer_was_lost(
    client, paid, localstripe, ops, monkeypatch
):
    """Stripe made our refund but its answer never came: the refund is pending here until the
    webhook (or the charge job) says it was made. Never a second credit note or refund."""
    made = gateway.refund_create

    def answer_lost(**kwargs):
        made(**kwargs)
        raise gateway.GatewayUnavailable("timed out", code=gateway.GatewayErrorCode.UNAVAILABLE)

    monkeypatch.setattr(gateway, "refund_create", answer_lost)
    credit_note = credit_note_issue(
        invoice=paid,
        actor=Actor(user=ops),
        reason=Reason.GOODWILL,
        outcome=Outcome.REFUND,
        amount=10_000,
        now=timezone.now(),
    )
    monkeypatch.undo()
    refund = credit_note.refunds.get()
    assert (credit_note.status, refund.status) == ("refund_pending", "pending")
    [at_stripe] = gateway.refunds_of(payment_intent_id=refund.payment_intent_id)

    response = deliver(client, refunded_event(localstripe, refund.payment_intent_id))

    assert response.json()["outcome"] == f"{at_stripe.refund_id}: our refund, done"
    refund.refresh_from_db()
    credit_note.refresh_from_db()
    assert (refund.status, refund.processor_id) == ("succeeded", at_stripe.refund_id)
    assert (credit_note.status, credit_note.reference) == ("issued", at_stripe.refund_id)
    assert refunds_retry_pending(now=timezone.now()) == 0
    assert len(gateway.refunds_of(payment_intent_id=refund.payment_intent_id)) == 1
    assert CreditNote.objects.count() == 1


def test_a_refund_over_what_is_left_to_credit_is_left_for_ops(client, paid, localstripe, ops):
    # Most of the invoice was credited to the balance already: $82.77 is left to credit.
    credit_note_issue(
        invoice=paid,
        actor=Actor(user=ops),
        reason=Reason.GOODWILL,
        outcome=Outcome.BALANCE,
        amount=90_000,
        now=timezone.now(),
    )
    payment = card_payment(paid)
    refund_id = refund_in_dashboard(payment.processor_id, 10_000)
    sent = refunded_event(localstripe, payment.processor_id)

    assert deliver(client, sent).json()["outcome"] == f"{refund_id}: needs review"
    assert deliver(client, {**sent, "id": "evt_again"}).json()["outcome"] == (
        f"{refund_id}: needs review"
    )

    assert CreditNote.objects.count() == 1  # the balance one only
    assert not Refund.objects.exists()
    assert open_differences() == [("refund_unmatched", refund_id, payment.pk, paid.pk)]
    difference = ReconciliationDifference.objects.get()
    assert difference.ours["problem"] == (
        f"$100.00 is more than the $82.77 invoice {paid.number} has left to credit"
    )
    assert (difference.theirs["refund"], difference.theirs["amount"]) == (refund_id, 10_000)
    assert difference.organisation == paid.organisation
    paid.refresh_from_db()
    assert paid.amount_credited == 90_000


def test_a_refund_that_arrives_before_the_success_is_recorded_by_the_reconciliation(
    localstripe, client, subscribed, org, clock
):
    """Out of order: Stripe's refund event comes before we know the charge succeeded. It waits
    for ops, then the reconciliation records it once the success is known, and closes it."""
    payment, intent = timed_out_charge(localstripe, renewal_invoice(org))
    refund_id = refund_in_dashboard(intent["id"], 5_000)

    assert deliver(client, refunded_event(localstripe, intent["id"])).json()["outcome"] == (
        f"{refund_id}: needs review"
    )
    [difference] = ReconciliationDifference.objects.all()
    assert (difference.kind, difference.processor_id, difference.payment) == (
        "refund_unmatched",
        refund_id,
        None,
    )
    assert difference.ours["problem"] == (
        f"{intent['id']} is not a card payment recorded here, so there is no invoice to credit"
    )
    deliver(client, event("payment_intent.succeeded", intent))
    payment.refresh_from_db()
    assert payment.status == "succeeded"

    _, LATER = clock
    assert counts(reconcile(now=LATER)) == (0, 0, 1, 1)

    credit_note = CreditNote.objects.get()
    assert (credit_note.invoice, credit_note.total, credit_note.reference) == (
        payment.invoice,
        5_000,
        refund_id,
    )
    difference.refresh_from_db()
    assert (difference.resolution, difference.resolved_by) == ("no_action", None)
    assert difference.note == (
        f"Closed automatically on {LATER:%Y-%m-%d %H:%M} UTC: recorded as credit note "
        f"{credit_note.number}."
    )
    assert counts(reconcile(now=LATER + timedelta(hours=1))) == (0, 0, 0, 0)


def test_a_refund_of_a_charge_we_never_recorded_refunded_in_full_needs_nothing(
    localstripe, client, subscribed, org
):
    payment, intent = timed_out_charge(localstripe, renewal_invoice(org))
    refund_id = refund_in_dashboard(intent["id"])

    assert deliver(client, refunded_event(localstripe, intent["id"])).json()["outcome"] == (
        f"{refund_id}: charge never recorded here, refunded in full"
    )
    assert not CreditNote.objects.exists()
    assert open_differences() == []


def test_events_that_are_not_a_payment_intent_charge_are_left_alone(client, paid, localstripe):
    intent_id = card_payment(paid).processor_id
    refund_in_dashboard(intent_id, 1_000)
    charge = charge_of(localstripe, intent_id)

    outcomes = [
        deliver(client, event(REFUNDED, {**charge, "payment_intent": None})).json()["outcome"],
        deliver(client, event(REFUNDED, {**charge, "amount": "x"})).json()["outcome"],
        deliver(client, event(REFUNDED, {**charge, "refunds": None})).json()["outcome"],
        deliver(client, event(REFUNDED, {**charge, "refunds": {"data": [{"id": "re_1"}]}})).json()[
            "outcome"
        ],
    ]
    assert outcomes == [
        "ignored: not the charge of a PaymentIntent",
        "ignored: not a charge",
        "refunds not listed: the reconciliation records them",
        "ignored: not a refund",
    ]
    assert not CreditNote.objects.exists()
    assert not ReconciliationDifference.objects.exists()


# The daily reconciliation -------------------------------------------------------------------------


def test_the_reconciliation_records_a_dashboard_refund_whose_webhook_was_lost(
    paid, localstripe, clock, committed
):
    _, LATER = clock
    payment = card_payment(paid)
    refund_id = refund_in_dashboard(payment.processor_id, 20_000)
    mail.outbox.clear()

    with committed():
        assert counts(reconcile(now=LATER)) == (0, 0, 0, 1)

    credit_note = CreditNote.objects.get()
    assert (credit_note.outcome, credit_note.total, credit_note.reference) == (
        Outcome.REFUNDED_IN_STRIPE,
        20_000,
        refund_id,
    )
    assert Refund.objects.get().processor_id == refund_id
    assert ["admin@acme.test"] in [m.to for m in mail.outbox if credit_note.number in m.subject]
    # Found again the next day: nothing more.
    assert counts(reconcile(now=LATER + timedelta(days=1))) == (0, 0, 0, 0)
    assert CreditNote.objects.count() == 1
    assert open_differences() == []


def test_the_reconciliation_asks_stripe_for_refunds_only_where_amounts_differ(
    paid, localstripe, clock, ops, monkeypatch
):
    _, LATER = clock
    credit_note_issue(
        invoice=paid,
        actor=Actor(user=ops),
        reason=Reason.GOODWILL,
        outcome=Outcome.REFUND,
        amount=10_000,
        now=LATER,
    )
    asked = []
    listed = gateway.refunds_of

    def refunds_of(*, payment_intent_id):
        asked.append(payment_intent_id)
        return listed(payment_intent_id=payment_intent_id)

    monkeypatch.setattr(gateway, "refunds_of", refunds_of)
    # Our own refund is the only one: Stripe's refunded amount agrees with ours.
    assert counts(reconcile(now=LATER)) == (0, 0, 0, 0)
    assert asked == []

    refund_in_dashboard(card_payment(paid).processor_id, 5_000)
    assert counts(reconcile(now=LATER)) == (0, 0, 0, 1)
    assert asked == [card_payment(paid).processor_id]
    assert CreditNote.objects.count() == 2


@pytest.mark.parametrize("first", ["webhook", "reconciliation"])
def test_the_webhook_and_the_reconciliation_record_the_refund_once(
    client, paid, localstripe, clock, first
):
    _, LATER = clock
    intent_id = card_payment(paid).processor_id
    refund_id = refund_in_dashboard(intent_id, 10_000)
    sent = refunded_event(localstripe, intent_id)

    if first == "webhook":
        deliver(client, sent)
        assert counts(reconcile(now=LATER)) == (0, 0, 0, 0)
    else:
        assert counts(reconcile(now=LATER)) == (0, 0, 0, 1)
        assert deliver(client, sent).json()["outcome"] == f"{refund_id}: already recorded"

    assert Refund.objects.get().processor_id == refund_id
    assert CreditNote.objects.count() == 1
    paid.refresh_from_db()
    assert paid.amount_credited == 10_000


@pytest.mark.django_db(transaction=True)
def test_two_finders_at_once_record_the_refund_once(paid, localstripe):
    intent_id = card_payment(paid).processor_id
    refund_in_dashboard(intent_id, 10_000)
    [refund] = gateway.refunds_of(payment_intent_id=intent_id)
    charge = RefundedCharge(
        payment_intent_id=intent_id,
        customer_id="",
        amount=98_277,
        amount_refunded=10_000,
        currency="usd",
    )
    barrier = threading.Barrier(2)
    outcomes = []

    def record():
        barrier.wait()
        try:
            outcomes.append(
                stripe_refund_record(refund=refund, charge=charge, now=timezone.now()).outcome
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=record) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == sorted(
        [RefundOutcome.CREDIT_NOTE_ISSUED, RefundOutcome.ALREADY_RECORDED]
    )
    assert CreditNote.objects.count() == 1
    paid.refresh_from_db()
    assert paid.amount_credited == 10_000


# Double charges -----------------------------------------------------------------------------------


@pytest.fixture
def double_charge(localstripe, client, subscribed, org):
    """The renewal's charge succeeded at Stripe while its answer was lost; ops meanwhile
    recorded a bank transfer for the invoice. The success webhook then comes: charged twice."""
    payment, intent = timed_out_charge(localstripe, renewal_invoice(org))
    invoice = payment.invoice
    payment_record_manual(invoice=invoice, actor=Actor(user=None), reference="BANK-1", now=RENEWAL)
    response = deliver(client, event("payment_intent.succeeded", intent))
    assert (
        response.json()["outcome"] == f"needs review: charged but invoice {invoice.number} is paid"
    )
    payment.refresh_from_db()
    return payment, intent


def test_a_success_for_a_paid_invoice_opens_a_double_charge_at_once(double_charge):
    payment, intent = double_charge
    invoice = payment.invoice
    assert payment.status == "pending"
    assert open_differences() == [("double_charge", intent["id"], payment.pk, invoice.pk)]
    difference = ReconciliationDifference.objects.get()
    assert (difference.organisation, difference.ours["invoice_status"]) == (
        invoice.organisation,
        "paid",
    )
    assert (difference.theirs["amount"], difference.theirs["currency"]) == (invoice.total, "USD")
    # The charge job's retry, or the reconciliation, find the same one: still one open.
    payment_succeeded(payment=payment, processor_id=intent["id"], now=timezone.now())
    assert len(open_differences()) == 1


def test_the_reconciliation_finds_a_double_charge_once(double_charge, clock):
    _, LATER = clock
    payment, intent = double_charge
    assert counts(reconcile(now=LATER)) == (0, 1, 0, 0)
    assert open_differences() == [("double_charge", intent["id"], payment.pk, payment.invoice_id)]


def test_a_missing_charge_for_an_invoice_paid_meanwhile_becomes_a_double_charge(
    localstripe, subscribed, org, ops, clock
):
    _, LATER = clock
    payment, intent = timed_out_charge(localstripe, renewal_invoice(org))
    assert counts(reconcile(now=LATER)) == (1, 0, 0, 0)
    difference = ReconciliationDifference.objects.get()
    assert difference.kind == "missing_here"
    invoice = payment.invoice
    payment_record_manual(invoice=invoice, actor=Actor(user=None), reference="BANK-1", now=LATER)

    with pytest.raises(ServiceError) as refused:
        difference_resolve_record_payment(
            difference=difference, actor=Actor(user=ops), reason="Record it", now=LATER
        )
    assert refused.value.message == (
        f"Invoice {invoice.number} is already paid, so {intent['id']} "
        f"({format_money(invoice.total, 'USD')}) is a double charge: nothing was recorded. "
        'The next reconciliation reports it as "Charged twice", to refund with "Refund this '
        'charge".'
    )
    assert counts(reconcile(now=LATER + timedelta(hours=1))) == (1, 0, 1, 0)
    assert open_differences() == [("double_charge", intent["id"], payment.pk, invoice.pk)]


def test_refund_this_charge_issues_a_credit_note_and_refunds_at_stripe(
    double_charge, client_for, ops, localstripe, committed, clock
):
    payment, intent = double_charge
    invoice = payment.invoice
    difference = ReconciliationDifference.objects.get()
    client = client_for(ops)
    assert "refund_charge" in client.get(DIFFERENCES).content.decode()
    asked = client.post(
        DIFFERENCES, {"action": "refund_charge", "_selected_action": [difference.pk]}
    )
    assert "Refund these second charges in full to the card?" in asked.content.decode()
    assert not CreditNote.objects.exists()
    mail.outbox.clear()

    with committed():
        done = client.post(
            DIFFERENCES,
            {
                "action": "refund_charge",
                "_selected_action": [difference.pk],
                "apply": "1",
                "reason": "Paid by bank transfer too",
            },
            follow=True,
        )

    credit_note = CreditNote.objects.get()
    refund = Refund.objects.get()
    assert f"{difference}: credit note {credit_note.number} issued, charge refunded." in (
        done.content.decode()
    )
    assert (credit_note.reason, credit_note.outcome, credit_note.status, credit_note.total) == (
        Reason.DUPLICATE,
        Outcome.REFUND,
        CreditNote.Status.ISSUED,
        invoice.total,
    )
    assert (credit_note.tax_amount, credit_note.created_by, credit_note.invoice) == (
        0,
        ops,
        invoice,
    )
    [line] = credit_note.lines.all()
    assert (line.invoice_line, line.description, line.amount) == (
        None,
        f"Refund of a second charge ({intent['id']})",
        invoice.total,
    )
    assert (refund.payment, refund.payment_intent_id, refund.amount, refund.status) == (
        payment,
        intent["id"],
        invoice.total,
        "succeeded",
    )
    assert refund.idempotency_key == f"credit-note-{credit_note.public_id}-refund"
    [at_stripe] = gateway.refunds_of(payment_intent_id=intent["id"])
    assert (at_stripe.refund_id, at_stripe.amount) == (refund.processor_id, invoice.total)
    assert at_stripe.metadata["idempotency_key"] == refund.idempotency_key
    # A second charge's credit note credits none of the invoice.
    invoice.refresh_from_db()
    assert (invoice.amount_credited, invoice.status) == (0, "paid")
    assert f"Refund of a second charge ({intent['id']})" in pdf_text(credit_note)
    assert ["admin@acme.test"] in [m.to for m in mail.outbox if credit_note.number in m.subject]
    difference.refresh_from_db()
    assert (difference.resolution, difference.resolved_by, difference.note) == (
        "refunded",
        ops,
        "Paid by bank transfer too",
    )
    audit = AuditEvent.objects.get(action="billing.reconciliation_refunded")
    assert (audit.actor, audit.target_label) == (ops, invoice.number)
    assert audit.changes == {
        "processor_id": {"old": None, "new": intent["id"]},
        "refund": {"old": None, "new": format_money(invoice.total, "USD")},
        "credit_note": {"old": None, "new": credit_note.number},
        "reason": {"old": None, "new": "Paid by bank transfer too"},
    }

    # Twice: refused, nothing more.
    again = client.post(
        DIFFERENCES,
        {
            "action": "refund_charge",
            "_selected_action": [difference.pk],
            "apply": "1",
            "reason": "Again",
        },
        follow=True,
    )
    assert "This difference was already resolved on" in again.content.decode()
    assert (CreditNote.objects.count(), Refund.objects.count()) == (1, 1)
    assert len(gateway.refunds_of(payment_intent_id=intent["id"])) == 1

    # Stripe's event for our refund marks nothing twice, and the reconciliation stays clean.
    outcome = deliver(client, refunded_event(localstripe, intent["id"])).json()["outcome"]
    assert outcome == f"{refund.processor_id}: our refund, done"
    _, LATER = clock
    assert counts(reconcile(now=LATER)) == (0, 0, 0, 0)
    assert open_differences() == []
    assert CreditNote.objects.count() == 1


def test_refund_this_charge_is_refused_once_stripe_refunded_some_of_it(
    double_charge, ops, localstripe
):
    payment, intent = double_charge
    refund_in_dashboard(intent["id"], 1_000)
    difference = ReconciliationDifference.objects.get()

    with pytest.raises(ServiceError) as refused:
        difference_resolve_refund(
            difference=difference, actor=Actor(user=ops), reason="Refund it", now=timezone.now()
        )
    assert refused.value.message == (
        f"Stripe already refunded $10.00 of {intent['id']} "
        f"({format_money(payment.amount, 'USD')}): nothing was refunded here. The difference "
        "closes by itself once the charge is refunded in full; dismiss it otherwise."
    )
    assert not CreditNote.objects.exists()
    difference.refresh_from_db()
    assert difference.resolved_at is None
    assert not AuditEvent.objects.filter(action="billing.reconciliation_refunded").exists()


def test_refund_this_charge_is_only_for_double_charges_and_needs_a_person(
    double_charge, ops, localstripe
):
    payment, intent = double_charge
    difference = ReconciliationDifference.objects.get()
    with pytest.raises(ServiceError, match="A difference is resolved by a person"):
        difference_resolve_refund(
            difference=difference, actor=Actor(user=None), reason="x", now=timezone.now()
        )
    with pytest.raises(ServiceError, match="Give a reason"):
        difference_resolve_refund(
            difference=difference, actor=Actor(user=ops), reason="  ", now=timezone.now()
        )
    ReconciliationDifference.objects.filter(pk=difference.pk).update(kind="missing_here")
    with pytest.raises(ServiceError) as refused:
        difference_resolve_refund(
            difference=difference, actor=Actor(user=ops), reason="x", now=timezone.now()
        )
    assert refused.value.message == (
        'This difference is "Charged at Stripe, not recorded here"; this action is for '
        '"Charged twice" differences. Nothing changed.'
    )
    assert not CreditNote.objects.exists()
    assert gateway.refunds_of(payment_intent_id=intent["id"]) == []


def test_a_double_charge_refunded_in_the_dashboard_is_recorded_and_resolved(
    double_charge, client, localstripe, clock
):
    payment, intent = double_charge
    refund_id = refund_in_dashboard(intent["id"])

    outcome = deliver(client, refunded_event(localstripe, intent["id"])).json()["outcome"]

    credit_note = CreditNote.objects.get()
    assert outcome == f"{refund_id}: credit note issued {credit_note.number}"
    assert (credit_note.reason, credit_note.outcome) == (
        Reason.REFUNDED_IN_STRIPE,
        Outcome.REFUNDED_IN_STRIPE,
    )
    assert [line.invoice_line for line in credit_note.lines.all()] == [None]
    difference = ReconciliationDifference.objects.get()
    assert (difference.resolution, difference.resolved_by, difference.note) == (
        "refunded",
        None,
        f"Refunded in Stripe ({refund_id}): credit note {credit_note.number}.",
    )
    payment.invoice.refresh_from_db()
    assert payment.invoice.amount_credited == 0
    _, LATER = clock
    assert counts(reconcile(now=LATER)) == (0, 0, 0, 0)
    assert open_differences() == []


def test_read_only_staff_cannot_refund_a_charge(double_charge, client_for, localstripe):
    reader = UserFactory(is_staff=True)
    reader.groups.add(Group.objects.get(name=READ_ONLY))
    client = client_for(reader)
    difference = ReconciliationDifference.objects.get()
    assert "refund_charge" not in client.get(DIFFERENCES).content.decode()
    client.post(
        DIFFERENCES,
        {
            "action": "refund_charge",
            "_selected_action": [difference.pk],
            "apply": "1",
            "reason": "try",
        },
    )
    difference.refresh_from_db()
    assert difference.resolved_at is None
    assert not CreditNote.objects.exists()
    assert gateway.refunds_of(payment_intent_id=difference.processor_id) == []


# End to end: localstripe delivers -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_localstripe_delivers_the_refund_made_in_the_dashboard(
    localstripe, live_server, org, admin
):
    webhook_id = register_webhook(live_server.url + URL, events=REFUND_EVENTS)
    try:
        invoice = subscribe(org)
        intent_id = card_payment(invoice).processor_id
        refund_id = refund_in_dashboard(intent_id, 10_000)
        deadline = time.monotonic() + 15  # localstripe waits 1 s before it sends
        while time.monotonic() < deadline and not CreditNote.objects.exists():
            time.sleep(0.2)
    finally:
        unregister_webhook(webhook_id)
    credit_note = CreditNote.objects.get()
    assert (credit_note.invoice, credit_note.total, credit_note.reference) == (
        invoice,
        10_000,
        refund_id,
    )
    # (An event of an earlier test's refund, a second old, may come here too.)
    stored = StripeEvent.objects.get(type=REFUNDED, payload__data__object__payment_intent=intent_id)
    assert stored.outcome == f"{refund_id}: credit note issued {credit_note.number}"
