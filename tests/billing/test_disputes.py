"""Disputes (chargebacks, billing.disputes): Stripe's `charge.dispute.*` events, stored once and
applied in Stripe's order; a lost dispute reopens the invoice and dunning collects it again.

The disputes are real ones at localstripe (scripts/localstripe_server.py plays the cardholder
and the bank, devkit.stripe_standin drives it); each hook answers the Event it made, which
these tests sign and deliver themselves, in any order and twice. The last test has localstripe
deliver them to a live server.
"""

import copy
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine as time_machine_module
from django.conf import settings
from django.core import mail

from accounts.audit import Actor
from accounts.models import AuditEvent, OutgoingEmail
from billing import gateway
from billing.collection import dunning_advance
from billing.credit_notes import credit_note_issue
from billing.disputes import DISPUTE_LOST_RESULT
from billing.ledger import ledger_check
from billing.models import (
    CreditNote,
    Dispute,
    DunningCase,
    DunningStep,
    Invoice,
    Payment,
    ReconciliationDifference,
    StripeEvent,
)
from billing.reconciliation import reconcile
from devkit.stripe_standin import (
    DISPUTE_EVENTS,
    card_payment_method,
    dispute_close,
    dispute_open,
    dispute_update,
    register_webhook,
    standin_request,
    unregister_webhook,
)
from portal.dashboard import ops_dashboard
from subscriptions.models import Subscription
from subscriptions.states import subscription_transition
from tests.billing.helpers import START, subscribe

pytestmark = pytest.mark.django_db

URL = "/webhooks/stripe/"
# The dispute is decided three weeks after the first invoice was paid (before the renewal).
LOST_AT = datetime(2026, 2, 20, 9, 0, tzinfo=UTC)


def sign(body: bytes) -> str:
    """Stripe's signature: HMAC-SHA256 of "{t}.{body}" with the webhook secret."""
    timestamp = int(time.time())
    secret = settings.STRIPE_WEBHOOK_SECRET.encode()
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def deliver(client, event: dict):
    body = json.dumps(event).encode()
    return client.post(
        URL, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=sign(body)
    )


def outcome(response) -> str:
    assert response.status_code == 200, response.content
    return response.json().get("outcome", response.json()["status"])


def another(event: dict, *, created_by: int = 0, **dispute) -> dict:
    """Another event about the same dispute (a new event id), `created_by` seconds later."""
    copied = copy.deepcopy(event)
    copied["id"] = f"evt_{uuid.uuid4().hex[:14]}"
    copied["created"] += created_by
    copied["data"]["object"].update(dispute)
    return copied


@pytest.fixture
def paid(localstripe, org, admin, billing_user):
    """Professional monthly, first invoice ($799.00 + 23% tax = $982.77) paid by Visa at START."""
    invoice = subscribe(org)
    assert (invoice.status, invoice.total) == (Invoice.Status.PAID, 98_277)
    return invoice


@pytest.fixture
def payment(paid) -> Payment:
    return paid.payments.get(status=Payment.Status.SUCCEEDED)


def dispute_summary(dispute: Dispute) -> tuple:
    return (dispute.status, dispute.amount, dispute.currency, dispute.reason)


# Opened, updated --------------------------------------------------------------------------------


def test_a_dispute_opened_marks_the_payment_and_the_dashboard_counts_it(client, paid, payment):
    emails = OutgoingEmail.objects.count()
    created = dispute_open(payment.processor_id)
    stripe_dispute = created["data"]["object"]

    response = deliver(client, created)

    assert (
        outcome(response) == f"dispute needs_response: payment {payment.pk}, invoice {paid.number}"
    )
    dispute = Dispute.objects.get()
    opened_at = datetime.fromtimestamp(stripe_dispute["created"], tz=UTC)
    assert (dispute.processor_id, dispute.payment, dispute.invoice, dispute.organisation) == (
        stripe_dispute["id"],
        payment,
        paid,
        paid.organisation,
    )
    assert dispute_summary(dispute) == ("needs_response", 98_277, "USD", "fraudulent")
    assert (dispute.opened_at, dispute.event_created) == (
        opened_at,
        datetime.fromtimestamp(created["created"], tz=UTC),
    )
    assert (dispute.closed_at, dispute.lost_applied_at) == (None, None)
    payment.refresh_from_db()
    paid.refresh_from_db()
    # Disputed, not lost: the money is still ours and nothing else changes.
    assert (payment.status, payment.disputed_at) == ("succeeded", opened_at)
    assert (paid.status, paid.amount_paid) == ("paid", 98_277)
    assert OutgoingEmail.objects.count() == emails
    audit = AuditEvent.objects.get(action="billing.dispute_opened")
    assert (audit.target_label, audit.changes["dispute"]) == (
        f"{paid.number}: {dispute.processor_id}",
        {"old": None, "new": "needs_response"},
    )
    disputes, refunds = ops_dashboard(now=LOST_AT)["money_back"]
    assert (disputes.label, disputes.value, disputes.detail) == (
        "Open disputes",
        "1",
        "$982.77 disputed",
    )
    assert disputes.url == "/admin/billing/dispute/?state=open"


def test_an_update_moves_the_status(client, paid, payment):
    created = dispute_open(payment.processor_id, amount=50_000, reason="product_not_received")
    deliver(client, created)
    updated = dispute_update(created["data"]["object"]["id"], status="under_review")

    assert outcome(deliver(client, updated)) == f"dispute under_review: invoice {paid.number}"

    dispute = Dispute.objects.get()
    assert dispute_summary(dispute) == ("under_review", 50_000, "USD", "product_not_received")
    assert dispute.event_created == datetime.fromtimestamp(updated["created"], tz=UTC)
    assert dispute.closed_at is None


def test_an_inquiry_that_turns_into_a_chargeback_follows(client, paid, payment):
    created = dispute_open(payment.processor_id, inquiry=True)
    assert outcome(deliver(client, created)).startswith("dispute warning_needs_response")
    escalated = dispute_update(created["data"]["object"]["id"], status="needs_response")
    deliver(client, escalated)
    assert Dispute.objects.get().status == "needs_response"


# Out of order, twice -----------------------------------------------------------------------------


def test_an_update_before_the_created_event_creates_the_dispute_and_keeps_the_later_state(
    client, paid, payment
):
    created = dispute_open(payment.processor_id)
    updated = dispute_update(created["data"]["object"]["id"], status="under_review")

    assert outcome(deliver(client, updated)) == (
        f"dispute under_review: payment {payment.pk}, invoice {paid.number}"
    )
    # The created event is older (or of the same second and further back): it changes nothing.
    assert outcome(deliver(client, created)) == "ignored: older than the last event applied"

    dispute = Dispute.objects.get()
    assert dispute.status == "under_review"
    payment.refresh_from_db()
    assert payment.disputed_at == dispute.opened_at


def test_an_event_made_before_the_last_one_applied_is_ignored(client, paid, payment):
    created = dispute_open(payment.processor_id)
    deliver(client, created)
    later = another(created, created_by=60, status="under_review")
    deliver(client, later)

    earlier = another(created, created_by=30, status="needs_response")
    assert outcome(deliver(client, earlier)) == "ignored: older than the last event applied"
    # Made later than the last one applied, an event moves the dispute even back.
    latest = another(created, created_by=90, status="needs_response")
    assert outcome(deliver(client, latest)) == f"dispute needs_response: invoice {paid.number}"
    assert Dispute.objects.get().status == "needs_response"


def test_a_close_before_the_created_event_is_final(client, paid, payment):
    created = dispute_open(payment.processor_id)
    dispute_id = created["data"]["object"]["id"]
    updated = dispute_update(dispute_id)
    closed = dispute_close(dispute_id, status="won")

    assert outcome(deliver(client, closed)) == (
        f"dispute won: payment {payment.pk}, invoice {paid.number}"
    )
    assert outcome(deliver(client, created)) == "ignored: dispute already won"
    assert outcome(deliver(client, updated)) == "ignored: dispute already won"
    # Even an event Stripe made later never reopens a closed dispute.
    assert outcome(deliver(client, another(updated, created_by=60))) == (
        "ignored: dispute already won"
    )

    dispute = Dispute.objects.get()
    assert dispute.status == "won"
    assert dispute.closed_at == datetime.fromtimestamp(closed["created"], tz=UTC)
    assert StripeEvent.objects.filter(type__in=DISPUTE_EVENTS).count() == 4


def test_an_older_update_after_the_close_changes_nothing(client, paid, payment):
    created = dispute_open(payment.processor_id)
    dispute_id = created["data"]["object"]["id"]
    updated = dispute_update(dispute_id)
    closed = dispute_close(dispute_id, status="won")
    for event in (created, closed):
        deliver(client, event)

    assert outcome(deliver(client, updated)) == "ignored: dispute already won"
    assert Dispute.objects.get().status == "won"


def test_a_redelivered_event_is_applied_once(client, paid, payment, committed):
    created = dispute_open(payment.processor_id)
    closed = dispute_close(created["data"]["object"]["id"], status="lost")
    deliver(client, created)
    with committed():
        first = deliver(client, closed)
        again = deliver(client, closed)
        # The same close under another event id (Stripe never does; a replay might).
        copy_of_it = deliver(client, another(closed))

    assert outcome(first).startswith(f"lost: invoice {paid.number} open again")
    assert again.json() == {"status": "duplicate"}
    assert outcome(copy_of_it) == "ignored: dispute already lost"
    paid.refresh_from_db()
    assert (paid.status, paid.amount_paid) == ("open", 0)
    assert Dispute.objects.count() == 1
    assert StripeEvent.objects.filter(event_id=closed["id"]).count() == 1
    assert AuditEvent.objects.filter(action="billing.dispute_lost").count() == 1
    assert (
        DunningStep.objects.filter(case__subscription__organisation=paid.organisation).count() == 1
    )
    # One message (to each billing recipient).
    assert (
        OutgoingEmail.objects.filter(template="dispute_lost")
        .values("message_id")
        .distinct()
        .count()
        == 1
    )
    assert {m.subject for m in mail.outbox} == {
        f"Your bank reversed your payment for invoice {paid.number}"
    }


# Lost: the invoice owes the money again ----------------------------------------------------------


def test_a_lost_dispute_reopens_the_invoice_and_a_day_3_retry_collects_it(
    client, client_for, paid, payment, org, admin, committed, localstripe, time_machine
):
    time_machine.move_to(LOST_AT, tick=False)
    created = dispute_open(payment.processor_id)
    deliver(client, created)
    closed = dispute_close(created["data"]["object"]["id"], status="lost")
    with committed():
        response = deliver(client, closed)

    assert outcome(response) == (
        f"lost: invoice {paid.number} open again, $982.77 due (failed-payment schedule)"
    )
    paid.refresh_from_db()
    payment.refresh_from_db()
    dispute = Dispute.objects.get()
    assert (paid.status, paid.amount_paid, paid.amount_due) == ("open", 0, dispute.amount)
    assert (paid.paid_at, paid.closed_at) == (None, None)
    assert payment.status == Payment.Status.CHARGED_BACK
    assert (dispute.status, dispute.lost_applied_at) == ("lost", LOST_AT)
    # The failed-payment schedule, day 0 saying why.
    subscription = Subscription.objects.get(organisation=org)
    assert subscription.status == "past_due"
    case = DunningCase.objects.get(subscription=subscription, status="open")
    assert case.started_at == LOST_AT
    day_0 = case.steps.get()
    assert (day_0.step, day_0.attempts, day_0.result) == (
        "day_0",
        0,
        f"{DISPUTE_LOST_RESULT}: $982.77 for invoice {paid.number}",
    )
    # The customer is told in plain words, with the way to pay.
    assert sorted(m.to[0] for m in mail.outbox) == sorted(
        ["admin@acme.test", "billing@acme.test", org.primary_email]
    )
    message = mail.outbox[0]
    assert message.subject == f"Your bank reversed your payment for invoice {paid.number}"
    body = " ".join(message.body.split())
    assert (
        f"Your bank reversed your payment of $982.77 for invoice {paid.number} (Acme Trading): "
        "the cardholder disputed it and the bank decided in the cardholder's favour. "
        "The invoice is open again for $982.77."
    ) in body
    assert "We will charge the card on file again on 23 Feb 2026." in body
    assert "If the invoice is still unpaid on 6 Mar 2026, the account is suspended" in body
    assert "http://testserver/o/acme/settings/billing/payment-method/" in body or (
        f"/o/{org.slug}/settings/billing/payment-method/" in body
    )
    html = message.alternatives[0][0]
    assert "Payment details</a>" in html
    assert "favour" in html
    # Payment Method shows why on the timeline; Invoice History shows what is owed.
    page = client_for(admin).get(f"/o/{org.slug}/settings/billing/payment-method/")
    assert "Payment reversed by your bank after a dispute: $982.77 for invoice" in (
        page.content.decode()
    )
    history = client_for(admin).get(f"/o/{org.slug}/settings/billing/invoices/").content.decode()
    assert "Open · $982.77 due" in history

    # Day 3: the card is charged the amount lost, exactly, and the invoice is paid again.
    dunning_advance(now=LOST_AT + timedelta(days=3, minutes=1))

    paid.refresh_from_db()
    again = paid.payments.get(status=Payment.Status.SUCCEEDED)
    assert (again.attempt, again.amount) == (2, 98_277)
    intent = localstripe.v1.payment_intents.retrieve(again.processor_id)
    assert (intent["amount"], intent["currency"], intent["status"]) == (98_277, "usd", "succeeded")
    assert (paid.status, paid.amount_paid, paid.amount_due) == ("paid", paid.total, 0)
    case.refresh_from_db()
    subscription.refresh_from_db()
    assert (case.status, subscription.status) == ("resolved", "active")
    assert ledger_check(now=LOST_AT + timedelta(days=4), organisation_ids=[org.pk]) == []
    # Stripe still has the first charge as succeeded: reconciliation agrees with the charge-back.
    real_now = time_machine_module.escape_hatch.datetime.datetime.now(UTC)
    result = reconcile(now=real_now + timedelta(hours=1), days=1)
    assert (result.new, ReconciliationDifference.objects.count()) == (0, 0)


def test_a_lost_dispute_of_an_ended_subscription_reopens_the_invoice_without_dunning(
    client, paid, payment, org, committed, time_machine
):
    time_machine.move_to(LOST_AT, tick=False)
    subscription = Subscription.objects.get(organisation=org)
    subscription_transition(subscription=subscription, to="ended", now=LOST_AT)
    created = dispute_open(payment.processor_id)
    deliver(client, created)
    with committed():
        response = deliver(client, dispute_close(created["data"]["object"]["id"], status="lost"))

    assert outcome(response) == (
        f"lost: invoice {paid.number} open again, $982.77 due (no dunning: subscription ended)"
    )
    paid.refresh_from_db()
    assert (paid.status, paid.amount_due) == ("open", 98_277)
    assert not DunningCase.objects.filter(organisation=org).exists()
    body = " ".join(mail.outbox[0].body.split())
    assert (
        "The invoice is open again for $982.77. Please contact billing support to settle it."
        in (body)
    )
    assert "suspended" not in body


def test_a_partial_lost_dispute_reopens_the_invoice_for_the_amount_lost(
    client, paid, payment, committed
):
    created = dispute_open(payment.processor_id, amount=30_000, reason="product_unacceptable")
    deliver(client, created)
    with committed():
        deliver(client, dispute_close(created["data"]["object"]["id"], status="lost"))

    paid.refresh_from_db()
    assert (paid.status, paid.amount_paid, paid.amount_due) == ("open", 68_277, 30_000)
    assert "The invoice is open again for $300.00." in " ".join(mail.outbox[0].body.split())


def test_a_lost_dispute_of_a_void_invoice_is_left_for_review(client, paid, payment):
    created = dispute_open(payment.processor_id)
    deliver(client, created)
    Invoice.objects.filter(pk=paid.pk).update(status=Invoice.Status.VOID)
    emails = OutgoingEmail.objects.count()

    response = deliver(client, dispute_close(created["data"]["object"]["id"], status="lost"))

    assert outcome(response) == (
        f"needs review: dispute lost, but payment {payment.pk} is succeeded and invoice "
        f"{paid.number} is void"
    )
    paid.refresh_from_db()
    payment.refresh_from_db()
    assert (paid.status, paid.amount_paid, payment.status) == ("void", 98_277, "succeeded")
    assert Dispute.objects.get().lost_applied_at is None
    assert OutgoingEmail.objects.count() == emails


# Won: only the record ----------------------------------------------------------------------------


def test_a_won_dispute_changes_nothing_but_the_record(client_for, paid, payment, org, ops):
    ops.is_superuser = True
    ops.save(update_fields=["is_superuser"])
    client = client_for(ops)
    created = dispute_open(payment.processor_id)
    dispute_id = created["data"]["object"]["id"]
    for event in (created, dispute_update(dispute_id), dispute_close(dispute_id, status="won")):
        deliver(client, event)
    emails = OutgoingEmail.objects.count()

    dispute = Dispute.objects.get()
    assert (dispute.status, dispute.lost_applied_at) == ("won", None)
    paid.refresh_from_db()
    payment.refresh_from_db()
    assert (paid.status, paid.amount_paid, payment.status) == ("paid", 98_277, "succeeded")
    assert Subscription.objects.get(organisation=org).status == "active"
    assert not DunningCase.objects.exists()
    assert OutgoingEmail.objects.count() == emails
    assert AuditEvent.objects.get(action="billing.dispute_closed").changes == {
        "dispute": {"old": "under_review", "new": "won"}
    }
    assert ops_dashboard(now=LOST_AT)["money_back"][0].value == "0"
    # The subscription admin's timeline shows it opened and won.
    subscription = Subscription.objects.get(organisation=org)
    page = client.get(f"/admin/subscriptions/subscription/{subscription.pk}/change/")
    body = page.content.decode()
    assert f"{dispute_id} opened on {paid.number}: $982.77, fraudulent" in body
    assert f"{dispute_id} closed: Won" in body


# Unknown, malformed ------------------------------------------------------------------------------


def test_a_dispute_of_an_unknown_payment_is_stored_and_ignored(client, localstripe, paid):
    stranger = localstripe.v1.customers.create()
    method = card_payment_method()
    localstripe.v1.payment_methods.attach(method, params={"customer": stranger["id"]})
    intent = localstripe.v1.payment_intents.create(
        params={
            "amount": 2_000,
            "currency": "usd",
            "customer": stranger["id"],
            "payment_method": method,
            "confirm": True,
            "off_session": True,
        }
    )
    created = dispute_open(intent["id"])

    assert outcome(deliver(client, created)) == "unknown payment"
    stored = StripeEvent.objects.get(event_id=created["id"])
    assert (stored.type, stored.outcome) == ("charge.dispute.created", "unknown payment")
    assert not Dispute.objects.exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"id": "ch_123"}, "ignored: not a Dispute"),
        ({"status": "reopened"}, "ignored: unknown dispute status 'reopened'"),
        ({"amount": "982.77"}, "ignored: no disputed amount"),
        ({"payment_intent": None}, "ignored: no PaymentIntent"),
    ],
)
def test_a_malformed_dispute_is_stored_and_changes_nothing(client, paid, payment, change, expected):
    created = another(dispute_open(payment.processor_id), **change)

    assert outcome(deliver(client, created)) == expected
    assert StripeEvent.objects.get(event_id=created["id"]).outcome == expected
    assert not Dispute.objects.exists()
    payment.refresh_from_db()
    assert payment.disputed_at is None


def test_a_dispute_in_another_currency_is_left_for_review(client, paid, payment):
    created = another(dispute_open(payment.processor_id), currency="eur")
    assert outcome(deliver(client, created)) == (
        f"needs review: currency differs from payment {payment.pk}"
    )
    assert not Dispute.objects.exists()


# The stand-in ----------------------------------------------------------------------------------


def test_the_stand_in_refuses_what_stripe_refuses(paid, payment):
    created = dispute_open(payment.processor_id)
    dispute_id = created["data"]["object"]["id"]
    assert created["data"]["object"]["charge"].startswith("ch_")
    charge_id = created["data"]["object"]["charge"]
    status, body = standin_request("/_config/disputes", {"payment_intent": payment.processor_id})
    assert (status, body["error"]["message"]) == (400, f"Charge {charge_id} is already disputed.")
    dispute_close(dispute_id, status="lost")
    status, body = standin_request(f"/_config/disputes/{dispute_id}/update", {})
    assert (status, body["error"]["message"]) == (400, "This dispute is already closed (lost).")
    # The charge stays succeeded at Stripe: the dispute took the money, not the charge.
    assert gateway.payment_intent_get(payment_intent_id=payment.processor_id).status == "succeeded"


def test_localstripe_delivers_the_dispute_events_to_the_webhook(
    localstripe, live_server, org, admin
):
    webhook_id = register_webhook(live_server.url + URL, events=DISPUTE_EVENTS)
    try:
        invoice = subscribe(org)
        payment = invoice.payments.get(status=Payment.Status.SUCCEEDED)
        dispute_id = dispute_open(payment.processor_id)["data"]["object"]["id"]
        wait_for(lambda: Dispute.objects.filter(processor_id=dispute_id).exists())
        dispute_update(dispute_id)
        wait_for(lambda: Dispute.objects.get(processor_id=dispute_id).status == "under_review")
        dispute_close(dispute_id, status="lost")
        wait_for(lambda: Invoice.objects.get(pk=invoice.pk).status == "open")
    finally:
        unregister_webhook(webhook_id)
    dispute = Dispute.objects.get(processor_id=dispute_id)
    assert (dispute.status, dispute.lost_applied_at is not None) == ("lost", True)
    assert Payment.objects.get(pk=payment.pk).status == "charged_back"
    # (Events of earlier tests' disputes may arrive too: localstripe sends them a second late.)
    delivered = StripeEvent.objects.filter(payload__data__object__id=dispute_id).order_by("pk")
    assert list(delivered.values_list("type", flat=True)) == list(DISPUTE_EVENTS)


def wait_for(condition, seconds: float = 15) -> None:
    """localstripe sends an event a second after it happens."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("localstripe did not deliver the event in time")


# Ops: the dashboard, the admin ---------------------------------------------------------------


def test_the_dashboard_counts_refunds_waiting_for_stripe(paid, ops, monkeypatch):
    def stripe_down(**kwargs):
        raise gateway.GatewayUnavailable("Stripe did not answer.")

    monkeypatch.setattr(gateway, "refund_create", stripe_down)
    credit_note = credit_note_issue(
        invoice=paid,
        actor=Actor(user=ops),
        now=START,
        amount=10_000,
        reason=CreditNote.Reason.SERVICE_ISSUE,
        outcome=CreditNote.Outcome.REFUND,
    )
    assert credit_note.status == CreditNote.Status.REFUND_PENDING

    _, refunds = ops_dashboard(now=LOST_AT)["money_back"]
    assert (refunds.label, refunds.value, refunds.detail) == (
        "Refunds pending",
        "1",
        "$100.00 waiting for Stripe",
    )
    assert refunds.url == "/admin/billing/creditnote/?status__exact=refund_pending"


def test_the_dispute_admin_lists_open_and_closed_disputes(client_for, client, paid, payment, ops):
    created = dispute_open(payment.processor_id)
    deliver(client, created)
    dispute = Dispute.objects.get()
    staff = client_for(ops)

    listing = staff.get("/admin/billing/dispute/?state=open").content.decode()
    assert dispute.processor_id in listing
    assert "$982.77" in listing
    assert (
        dispute.processor_id
        not in staff.get("/admin/billing/dispute/?state=closed").content.decode()
    )
    detail = staff.get(f"/admin/billing/dispute/{dispute.pk}/change/")
    body = detail.content.decode()
    assert detail.status_code == 200
    assert created["id"] in body
    assert "charge.dispute.created" in body
    assert paid.number in body
    assert payment.processor_id in body
    # Read-only: nothing to save, add or delete.
    assert staff.post(f"/admin/billing/dispute/{dispute.pk}/change/", {}).status_code == 403
    assert staff.get("/admin/billing/dispute/add/").status_code == 403
    assert not AuditEvent.objects.filter(actor=ops).exists()


def test_the_dispute_admin_is_for_staff_only(client_for, client, paid, payment, admin):
    deliver(client, dispute_open(payment.processor_id))
    response = client_for(admin).get("/admin/billing/dispute/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_a_lost_dispute_on_an_applied_upgrade_stays_owed_when_the_retry_fails(
    client, paid, org, localstripe, time_machine
):
    """The upgrade was paid and applied; the cardholder's bank takes the money back, and the
    Day 3 retry is declined: the invoice stays open in dunning (the new plan was used), it is
    not voided as a declined upgrade waiting for its payment would be."""
    from billing.models import Invoice, PaymentMethod
    from devkit.stripe_standin import CHARGE_FAILS
    from tests.billing.helpers import add_card
    from tests.billing.test_upgrade import upgrade

    invoice, charge = upgrade(org, at=START + timedelta(days=14))
    assert charge.status == Payment.Status.SUCCEEDED
    time_machine.move_to(LOST_AT, tick=False)
    created = dispute_open(charge.processor_id)
    deliver(client, created)
    deliver(client, dispute_close(created["data"]["object"]["id"], status="lost"))
    add_card(org, number=CHARGE_FAILS, now=LOST_AT)
    assert PaymentMethod.objects.get(organisation=org, status="active").last4 == "0341"

    dunning_advance(now=LOST_AT + timedelta(days=3, minutes=1))

    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.OPEN
    assert invoice.amount_due == invoice.total
    assert invoice.plan_change.status == "applied"
    assert invoice.payments.filter(status=Payment.Status.FAILED).exists()
    assert Subscription.objects.get(organisation=org).status == "past_due"
    assert ledger_check(now=LOST_AT + timedelta(days=4), organisation_ids=[org.pk]) == []
