"""POST /webhooks/stripe/: Stripe events settle charges whose answer we never got.

Events are signed here as Stripe signs them (HMAC-SHA256 of "{t}.{body}" with the webhook
secret, header "t=...,v1=..."); their PaymentIntents are real ones from localstripe. The
last test has localstripe itself deliver the webhook to a live server.
"""

import contextlib
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.urls import reverse

from accounts.audit import Actor
from accounts.models import OutgoingEmail
from billing import gateway
from billing.invoicing import billing_run_issue, subscription_start
from billing.models import (
    BillingProfile,
    DunningCase,
    Invoice,
    Payment,
    PaymentMethod,
    ReconciliationDifference,
    StripeEvent,
)
from billing.payments import payment_record_manual
from devkit.stripe_standin import CHARGE_FAILS, register_webhook, unregister_webhook
from subscriptions.models import PaymentMethodKind, Plan, Subscription
from tests.billing.helpers import START, add_card

pytestmark = pytest.mark.django_db

URL = "/webhooks/stripe/"
RENEWAL = datetime(2026, 2, 28, 10, 0, tzinfo=UTC)
SUCCEEDED = "payment_intent.succeeded"
FAILED = "payment_intent.payment_failed"
BAD_SIGNATURE = {"error": "Invalid Stripe-Signature header."}
MALFORMED = {"error": "The body is not a JSON event."}


def sign(body: bytes, *, secret: str | None = None, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    secret = settings.STRIPE_WEBHOOK_SECRET if secret is None else secret
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def event(event_type: str, intent: dict, *, event_id: str | None = None) -> dict:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": event_type,
        "api_version": "2017-08-15",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": intent},
    }


def deliver(client, body, *, signature: str | None = "sign"):
    """POST a body as Stripe would; `signature="sign"` signs it correctly."""
    if isinstance(body, dict):
        body = json.dumps(body, indent=2).encode()
    headers = {}
    if signature == "sign":
        headers["HTTP_STRIPE_SIGNATURE"] = sign(body)
    elif signature is not None:
        headers["HTTP_STRIPE_SIGNATURE"] = signature
    return client.post(URL, data=body, content_type="application/json", **headers)


def emails_sent() -> list[str]:
    """The templates of the emails queued so far, one entry per template."""
    return sorted(set(OutgoingEmail.objects.values_list("template", flat=True)))


def renewal_invoice(org) -> Invoice:
    """The open invoice of the second period (the first was paid at START)."""
    assert billing_run_issue(now=RENEWAL) == 1
    return Invoice.objects.get(organisation=org, status=Invoice.Status.OPEN)


def timed_out_charge(localstripe, invoice: Invoice, *, now=RENEWAL) -> tuple[Payment, dict]:
    """A card charge whose HTTP answer we never got: Stripe ran it, our row says pending.

    The attempt row is made as billing.payments does before calling Stripe, then the charge
    goes through billing.gateway, and its answer (success or decline) is thrown away.
    Returns the pending payment and the PaymentIntent as Stripe's events carry it.
    """
    method = PaymentMethod.objects.get(
        organisation_id=invoice.organisation_id, status=PaymentMethod.Status.ACTIVE
    )
    attempt = invoice.payments.count() + 1
    payment = Payment.objects.create(
        organisation_id=invoice.organisation_id,
        invoice=invoice,
        method_kind=PaymentMethodKind.CARD,
        payment_method=method,
        attempt=attempt,
        amount=invoice.amount_due,
        currency=invoice.currency,
        idempotency_key=f"invoice-{invoice.public_id}-attempt-{attempt}",
        created_at=now,
    )
    customer_id = BillingProfile.objects.get(
        organisation_id=invoice.organisation_id
    ).stripe_customer_id
    with contextlib.suppress(gateway.PaymentError):
        gateway.charge(
            customer_id=customer_id,
            payment_method_id=method.stripe_payment_method_id,
            amount=payment.amount,
            currency=payment.currency,
            idempotency_key=payment.idempotency_key,
            description=f"Invoice {invoice.number}",
            metadata={"invoice": invoice.number, "payment": str(payment.pk)},
        )
    [intent] = [
        intent
        for intent in localstripe.v1.payment_intents.list(params={"customer": customer_id})
        if intent["metadata"].to_dict().get("idempotency_key") == payment.idempotency_key
    ]
    return payment, intent.to_dict()


def as_failed(intent: dict) -> dict:
    """The same PaymentIntent as a failed attempt reports it."""
    return {
        **intent,
        "status": "requires_payment_method",
        "last_payment_error": {"code": "card_declined", "message": "Your card was declined."},
    }


@pytest.fixture
def pending(localstripe, subscribed, org):
    """A renewal invoice whose Visa charge succeeded at Stripe; our payment row is pending."""
    return timed_out_charge(localstripe, renewal_invoice(org))


# Success --------------------------------------------------------------------------------------


def test_success_event_pays_the_pending_payment_it_names(client, pending):
    payment, intent = pending
    OutgoingEmail.objects.all().delete()
    sent = event(SUCCEEDED, intent)
    response = deliver(client, sent)
    invoice = payment.invoice
    assert (response.status_code, response.json()) == (
        200,
        {"status": "processed", "outcome": f"succeeded: invoice {invoice.number} paid"},
    )
    payment.refresh_from_db()
    invoice.refresh_from_db()
    assert (payment.status, payment.processor_id) == ("succeeded", intent["id"])
    assert (invoice.status, invoice.amount_paid) == ("paid", invoice.total)
    stored = StripeEvent.objects.get()
    assert (stored.event_id, stored.type, stored.payload) == (sent["id"], SUCCEEDED, sent)
    assert stored.outcome == f"succeeded: invoice {invoice.number} paid"
    assert stored.processed_at is not None
    assert emails_sent() == ["payment_receipt"]


def test_a_redelivered_event_changes_nothing_the_second_time(client, pending):
    payment, intent = pending
    sent = event(SUCCEEDED, intent)
    first = deliver(client, sent)
    payment.refresh_from_db()
    completed_at = payment.completed_at
    emails = OutgoingEmail.objects.count()
    again = deliver(client, sent)
    assert (first.json()["status"], again.status_code, again.json()) == (
        "processed",
        200,
        {"status": "duplicate"},
    )
    assert StripeEvent.objects.count() == 1
    payment.refresh_from_db()
    assert (payment.status, payment.completed_at) == ("succeeded", completed_at)
    assert OutgoingEmail.objects.count() == emails


# Failure --------------------------------------------------------------------------------------


def test_failure_event_fails_the_pending_payment_and_starts_dunning(
    localstripe, client, subscribed, org
):
    add_card(org, number=CHARGE_FAILS, now=START + timedelta(days=1))
    payment, intent = timed_out_charge(localstripe, renewal_invoice(org))
    assert intent["status"] == "requires_payment_method"  # declined at Stripe
    OutgoingEmail.objects.all().delete()
    response = deliver(client, event(FAILED, intent))
    assert (response.status_code, response.json()) == (
        200,
        {"status": "processed", "outcome": "failed: card_declined"},
    )
    payment.refresh_from_db()
    assert (payment.status, payment.failure_code, payment.failure_message) == (
        "failed",
        "card_declined",
        "Your card was declined.",
    )
    assert payment.invoice.status == "open"
    assert Subscription.objects.get(organisation=org).status == "past_due"
    assert DunningCase.objects.filter(organisation=org, status="open").count() == 1
    assert emails_sent() == ["payment_failed"]


def test_a_failure_after_the_success_does_not_undo_it(client, pending):
    payment, intent = pending
    deliver(client, event(SUCCEEDED, intent))
    response = deliver(client, event(FAILED, as_failed(intent)))
    assert (response.status_code, response.json()) == (
        200,
        {"status": "processed", "outcome": "ignored: already succeeded"},
    )
    payment.refresh_from_db()
    assert (payment.status, payment.failure_code) == ("succeeded", "")
    assert payment.invoice.status == "paid"
    assert list(StripeEvent.objects.order_by("pk").values_list("type", "outcome")) == [
        (SUCCEEDED, f"succeeded: invoice {payment.invoice.number} paid"),
        (FAILED, "ignored: already succeeded"),
    ]


def test_a_success_after_a_failure_pays_the_invoice(client, pending, org):
    """A failed attempt is not final for a PaymentIntent, its success is: the customer paid."""
    payment, intent = pending
    failed = deliver(client, event(FAILED, as_failed(intent)))
    assert failed.json() == {"status": "processed", "outcome": "failed: card_declined"}
    payment.refresh_from_db()
    assert payment.status == "failed"
    assert Subscription.objects.get(organisation=org).status == "past_due"

    response = deliver(client, event(SUCCEEDED, intent))
    invoice = payment.invoice
    assert response.json() == {
        "status": "processed",
        "outcome": f"succeeded after recorded failure: invoice {invoice.number} paid",
    }
    payment.refresh_from_db()
    invoice.refresh_from_db()
    assert (payment.status, payment.processor_id, invoice.status) == (
        "succeeded",
        intent["id"],
        "paid",
    )
    assert Subscription.objects.get(organisation=org).status == "active"


# What is left alone ---------------------------------------------------------------------------


def test_unknown_event_types_are_stored_and_ignored(client, db):
    sent = event("customer.created", {"id": "cus_123", "object": "customer"})
    response = deliver(client, sent)
    assert (response.status_code, response.json()) == (200, {"status": "ignored"})
    stored = StripeEvent.objects.get()
    assert (stored.event_id, stored.type, stored.outcome) == (
        sent["id"],
        "customer.created",
        "ignored: event type not handled",
    )
    assert stored.processed_at is not None


def test_an_unknown_payment_intent_is_stored_and_left_alone(client, pending):
    payment, intent = pending
    stranger = {**intent, "id": "pi_notours", "metadata": {"idempotency_key": "someone-else"}}
    response = deliver(client, event(SUCCEEDED, stranger))
    assert (response.status_code, response.json()) == (
        200,
        {"status": "processed", "outcome": "unknown payment"},
    )
    assert StripeEvent.objects.get().outcome == "unknown payment"
    payment.refresh_from_db()
    assert (payment.status, payment.invoice.status) == ("pending", "open")


def test_an_event_is_matched_by_payment_intent_id_alone(localstripe, client, subscribed, org):
    [first] = localstripe.v1.payment_intents.list().data
    intent = {**first.to_dict(), "metadata": {}}
    response = deliver(client, event(SUCCEEDED, intent))
    assert response.json() == {"status": "processed", "outcome": "ignored: already succeeded"}
    assert Payment.objects.get(processor_id=intent["id"]).invoice == subscribed


def test_an_event_without_a_payment_intent_is_stored_and_left_alone(client, pending):
    payment, intent = pending
    response = deliver(client, event(SUCCEEDED, {**intent, "id": "ch_123"}))
    assert response.json() == {"status": "processed", "outcome": "ignored: not a PaymentIntent"}
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_a_success_whose_amount_differs_is_left_for_review(client, pending):
    payment, intent = pending
    response = deliver(client, event(SUCCEEDED, {**intent, "amount": intent["amount"] - 1}))
    assert response.json() == {
        "status": "processed",
        "outcome": f"needs review: amount differs from payment {payment.pk}",
    }
    payment.refresh_from_db()
    assert (payment.status, payment.invoice.status) == ("pending", "open")


def test_a_success_for_an_invoice_paid_meanwhile_is_left_for_review(client, pending):
    payment, intent = pending
    invoice = payment.invoice
    payment_record_manual(invoice=invoice, actor=Actor(user=None), reference="BANK-1", now=RENEWAL)
    response = deliver(client, event(SUCCEEDED, intent))
    assert response.json() == {
        "status": "processed",
        "outcome": f"needs review: charged but invoice {invoice.number} is paid",
    }
    payment.refresh_from_db()
    assert payment.status == "pending"
    assert invoice.payments.filter(status="succeeded").count() == 1
    # Charged twice: ops refund it from the reconciliation differences.
    [difference] = ReconciliationDifference.objects.all()
    assert (difference.kind, difference.processor_id, difference.payment, difference.invoice) == (
        "double_charge",
        intent["id"],
        payment,
        invoice,
    )


def test_a_failure_for_an_invoice_paid_meanwhile_starts_no_dunning(client, pending, org):
    payment, intent = pending
    invoice = payment.invoice
    payment_record_manual(invoice=invoice, actor=Actor(user=None), reference="BANK-1", now=RENEWAL)
    OutgoingEmail.objects.all().delete()
    response = deliver(client, event(FAILED, as_failed(intent)))
    assert response.json() == {
        "status": "processed",
        "outcome": f"failed: card_declined; invoice {invoice.number} is paid",
    }
    payment.refresh_from_db()
    assert payment.status == "failed"
    assert Subscription.objects.get(organisation=org).status == "active"
    assert DunningCase.objects.count() == 0
    assert emails_sent() == []


# Refused requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(lambda body: sign(body, secret="whsec_other"), id="other secret"),
        pytest.param(lambda body: sign(body + b" "), id="other body"),
        pytest.param(
            lambda body: sign(body, timestamp=int(time.time()) - 301), id="older than 5 minutes"
        ),
        pytest.param(lambda body: "t=1,v0=abc", id="no v1 signature"),
        pytest.param(lambda body: "garbage", id="garbage"),
        pytest.param(lambda body: "", id="empty"),
    ],
)
def test_a_bad_signature_is_refused_and_nothing_changes(client, pending, signature):
    payment, intent = pending
    body = json.dumps(event(SUCCEEDED, intent)).encode()
    response = deliver(client, body, signature=signature(body))
    assert (response.status_code, response.json()) == (400, BAD_SIGNATURE)
    assert StripeEvent.objects.count() == 0
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_a_missing_signature_is_refused(client, pending):
    payment, intent = pending
    response = deliver(client, event(SUCCEEDED, intent), signature=None)
    assert (response.status_code, response.json()) == (400, BAD_SIGNATURE)
    assert StripeEvent.objects.count() == 0
    payment.refresh_from_db()
    assert payment.status == "pending"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="not json"),
        pytest.param(b"\xff\xfe", id="not utf-8"),
        pytest.param(b"[1, 2]", id="a list"),
        pytest.param(b'"evt_1"', id="a string"),
        pytest.param(b'{"object": "event", "type": "x", "data": {"object": {}}}', id="no id"),
        pytest.param(b'{"id": "evt_1", "type": "x", "data": {"object": "x"}}', id="no object"),
        pytest.param(b'{"id": "evt_1", "type": 3, "data": {"object": {}}}', id="type not text"),
    ],
)
def test_a_signed_body_that_is_not_an_event_is_refused(client, db, body):
    response = deliver(client, body)
    assert (response.status_code, response.json()) == (400, MALFORMED)
    assert StripeEvent.objects.count() == 0


def test_only_post_is_allowed(client, db):
    response = client.get(URL)
    assert (response.status_code, response.json()) == (405, {"error": "Only POST is allowed."})
    assert response["Allow"] == "POST"


def test_the_endpoint_is_named_and_needs_no_csrf_token(pending):
    from django.test import Client

    payment, intent = pending
    assert reverse("stripe_webhook") == URL
    response = deliver(Client(enforce_csrf_checks=True), event(SUCCEEDED, intent))
    assert response.status_code == 200


# End to end: localstripe delivers ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_localstripe_delivers_the_event_that_settles_a_timed_out_first_charge(
    localstripe, live_server, org, admin
):
    """The first charge's answer was lost: Stripe's webhook pays the invoice and activates."""
    webhook_id = register_webhook(live_server.url + URL)
    try:
        add_card(org)
        invoice = subscription_start(
            organisation=org,
            actor=Actor(user=None),
            plan=Plan.objects.get(code="professional"),
            billing_cycle="monthly",
            currency="USD",
            now=START,
        )
        payment, intent = timed_out_charge(localstripe, invoice, now=START)
        assert (intent["status"], payment.status) == ("succeeded", "pending")
        deadline = time.monotonic() + 15  # localstripe waits 1 s before it sends
        while time.monotonic() < deadline:
            payment.refresh_from_db()
            if payment.status != "pending":
                break
            time.sleep(0.2)
    finally:
        unregister_webhook(webhook_id)
    invoice.refresh_from_db()
    assert (payment.status, payment.processor_id) == ("succeeded", intent["id"])
    assert invoice.status == "paid"
    assert Subscription.objects.get(organisation=org).status == "active"
    stored = StripeEvent.objects.get(type=SUCCEEDED, payload__data__object__id=intent["id"])
    assert stored.outcome == f"succeeded: invoice {invoice.number} paid"
