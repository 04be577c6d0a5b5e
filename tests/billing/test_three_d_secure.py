"""3-D Secure (billing.payments, billing.confirmation): on-session charges answered in the
browser, off-session charges that wait for the customer, Confirm payment, and the races
between the page and the webhook. Against the stand-in, which behaves as Stripe does."""

import uuid
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.urls import reverse

from accounts.audit import Actor
from billing.collection import dunning_advance
from billing.confirmation import (
    Confirmation,
    confirm_payment_begin,
    confirm_payment_finish,
    confirm_payment_state,
    upgrade_confirmation_cancel,
    upgrades_abandoned_void,
)
from billing.dunning import invoice_mark_uncollectible
from billing.models import DunningCase, Invoice, Payment
from billing.payments import ChargeOutcome, charge_outcome, invoice_charge
from billing.upgrades import subscription_upgrade, upgrade_quote
from billing.webhooks import stripe_event_receive
from devkit.stripe_standin import (
    AUTH_3DS2,
    AUTH_ALWAYS,
    CHARGE_FAILS,
    NEEDS_3DS,
    StripeJsError,
    authenticate_payment,
)
from subscriptions.models import Plan, PlanChange, ProcessFlow, Subscription
from tests.billing.helpers import START, add_card, subscribe
from tests.subscriptions.factories import EnvironmentFactory, ProcessFlowFactory

pytestmark = pytest.mark.django_db

RENEWAL = datetime(2026, 2, 28, 10, 0, tzinfo=UTC)


def tick(at):
    call_command("tick", "--now", at.isoformat(), stdout=StringIO())


def intents(localstripe, customer_invoice=None):
    found = list(localstripe.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter())
    if customer_invoice is not None:
        found = [i for i in found if i["metadata"].to_dict().get("invoice") == customer_invoice]
    return found


def subscription(org):
    return Subscription.objects.select_related("plan").get(organisation=org)


def succeeded_event(payment_intent_id: str, *, amount: int, key: str) -> dict:
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": payment_intent_id,
                "object": "payment_intent",
                "status": "succeeded",
                "amount": amount,
                "currency": "usd",
                "metadata": {"idempotency_key": key},
            }
        },
    }


# -- Checkout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [AUTH_ALWAYS, NEEDS_3DS, AUTH_3DS2])
def test_checkout_with_a_card_that_asks_is_paid_once_the_challenge_is_completed(
    localstripe, org, number
):
    invoice = subscribe(org, number=number)
    payment = invoice.payments.get()
    assert (payment.status, charge_outcome(payment)) == (
        "requires_action",
        ChargeOutcome.NEEDS_AUTHENTICATION,
    )
    assert subscription(org).status == "incomplete"

    state = confirm_payment_state(invoice=invoice)
    assert state.state == Confirmation.WAITING
    assert state.client_secret.startswith(payment.processor_id + "_secret_")
    authenticate_payment(state.client_secret)
    finished = confirm_payment_finish(invoice=invoice, now=START + timedelta(minutes=1))

    assert finished.state == Confirmation.PAID
    invoice.refresh_from_db()
    assert (invoice.status, invoice.amount_paid) == ("paid", invoice.total)
    payment.refresh_from_db()
    # Kept once paid: ops see how often the bank asked and how it ended.
    assert (payment.status, payment.authentication_requested_at) == ("succeeded", START)
    assert subscription(org).status == "active"
    [intent] = intents(localstripe)
    assert (intent["id"], intent["amount"], intent["status"]) == (
        payment.processor_id,
        invoice.total,
        "succeeded",
    )


def test_failed_challenge_leaves_the_invoice_open_and_the_same_payment_intent_is_retried(
    localstripe, org
):
    invoice = subscribe(org, number=AUTH_ALWAYS)
    authenticate_payment(confirm_payment_state(invoice=invoice).client_secret, success=False)

    failed = confirm_payment_finish(invoice=invoice, now=START)

    assert failed.state == Confirmation.RETRY
    assert failed.message.startswith("Your bank did not confirm the payment")
    invoice.refresh_from_db()
    assert invoice.status == "open"
    assert subscription(org).status == "incomplete"
    assert invoice.payments.get().status == "requires_action"

    again = confirm_payment_begin(invoice=invoice, now=START + timedelta(minutes=2))
    assert again.state == Confirmation.WAITING
    authenticate_payment(again.client_secret)
    assert confirm_payment_finish(invoice=invoice, now=START).state == Confirmation.PAID
    assert len(intents(localstripe)) == 1
    assert invoice.payments.count() == 1


def test_leaving_the_challenge_open_records_nothing(localstripe, org):
    invoice = subscribe(org, number=AUTH_ALWAYS)

    state = confirm_payment_finish(invoice=invoice, now=START)

    assert state.state == Confirmation.WAITING
    assert invoice.payments.get().status == "requires_action"


def test_declined_after_authentication_is_a_decline(localstripe, org):
    # 4000008260003178: authentication succeeds, then the issuer declines (insufficient funds).
    invoice = subscribe(org, number="4000008260003178")
    with pytest.raises(StripeJsError, match="declined"):  # what the page shows
        authenticate_payment(confirm_payment_state(invoice=invoice).client_secret)

    state = confirm_payment_finish(invoice=invoice, now=START)

    assert state.state == Confirmation.DECLINED
    payment = invoice.payments.get()
    assert payment.status == "failed"
    assert payment.failure_message


# -- Upgrade Plan -------------------------------------------------------------------------


def upgrade(org, *, at, code="enterprise"):
    sub = subscription(org)
    plan = Plan.objects.get(code=code)
    quote = upgrade_quote(subscription=sub, plan=plan, now=at)
    invoice = subscription_upgrade(
        organisation=org, actor=Actor(user=None), plan=plan, quoted_total=quote.total, now=at
    )
    return quote, invoice, invoice_charge(invoice=invoice, now=at, on_session=True)


def test_upgrade_applies_once_the_authenticated_amount_equal_to_the_quote_is_paid(
    subscribed, org, localstripe
):
    add_card(org, number=AUTH_ALWAYS)
    at = START + timedelta(days=14)
    quote, invoice, payment = upgrade(org, at=at)
    assert payment.status == "requires_action"
    assert subscription(org).plan.code == "professional"

    authenticate_payment(confirm_payment_state(invoice=invoice).client_secret)
    assert confirm_payment_finish(invoice=invoice, now=at).state == Confirmation.PAID

    assert subscription(org).plan.code == "enterprise"
    [intent] = intents(localstripe, invoice.number)
    assert intent["amount"] == quote.total == invoice.total
    assert PlanChange.objects.get(kind="upgrade").quote_total == quote.total


def test_failed_upgrade_challenge_keeps_the_plan_and_the_invoice_open_to_try_again(
    subscribed, org, localstripe
):
    add_card(org, number=AUTH_ALWAYS)
    at = START + timedelta(days=14)
    _, invoice, payment = upgrade(org, at=at)
    authenticate_payment(confirm_payment_state(invoice=invoice).client_secret, success=False)
    assert confirm_payment_finish(invoice=invoice, now=at).state == Confirmation.RETRY

    assert subscription(org).plan.code == "professional"
    invoice.refresh_from_db()
    assert invoice.status == "open"
    assert PlanChange.objects.get(kind="upgrade").status == "pending"
    assert not DunningCase.objects.exists()

    # Upgrading again to the same plan confirms the same invoice and PaymentIntent.
    later = at + timedelta(minutes=5)
    _, again, payment_again = upgrade(org, at=at)
    assert (again.pk, payment_again.pk) == (invoice.pk, payment.pk)
    authenticate_payment(confirm_payment_state(invoice=invoice).client_secret)
    assert confirm_payment_finish(invoice=invoice, now=later).state == Confirmation.PAID
    assert subscription(org).plan.code == "enterprise"
    assert len(intents(localstripe, invoice.number)) == 1


def test_an_upgrade_waiting_for_the_bank_can_be_cancelled_or_is_given_up(
    subscribed, org, localstripe
):
    add_card(org, number=AUTH_ALWAYS)
    at = START + timedelta(days=14)
    _, invoice, payment = upgrade(org, at=at)

    assert upgrades_abandoned_void(now=at + timedelta(minutes=59)) == 0
    assert upgrades_abandoned_void(now=at + timedelta(hours=1)) == 1
    assert upgrades_abandoned_void(now=at + timedelta(hours=1)) == 0

    invoice.refresh_from_db()
    assert invoice.status == "void"
    assert PlanChange.objects.get(kind="upgrade").status == "failed"
    assert subscription(org).plan.code == "professional"
    [intent] = intents(localstripe, invoice.number)
    assert intent["status"] == "canceled"
    assert not upgrade_confirmation_cancel(invoice=invoice, now=at)
    # A fresh upgrade is possible again.
    _, fresh, _ = upgrade(org, at=at + timedelta(hours=2))
    assert fresh.pk != invoice.pk


# -- Off-session: renewals, dunning -------------------------------------------------------


@pytest.fixture
def renewal_needs_authentication(subscribed, org, committed, localstripe, billing_user):
    environment = EnvironmentFactory(organisation=org)
    ProcessFlowFactory.create_batch(2, organisation=org, environment=environment)
    ProcessFlowFactory(
        organisation=org, environment=environment, status="paused", pause_reason="user"
    )
    add_card(org, number=AUTH_ALWAYS)
    mail.outbox.clear()
    with committed():
        tick(RENEWAL)
    return Invoice.objects.get(status="open")


def flows(org):
    return sorted(
        ProcessFlow.objects.filter(organisation=org).values_list("status", "pause_reason")
    )


def test_renewal_that_needs_authentication_is_chased_and_emails_the_confirm_link(
    renewal_needs_authentication, org, localstripe
):
    invoice = renewal_needs_authentication
    payment = invoice.payments.get()
    assert payment.status == "requires_action"
    assert subscription(org).status == "past_due"
    case = DunningCase.objects.get()
    assert case.steps.get(step="day_0").result.startswith("needs authentication")
    messages = [m for m in mail.outbox if "Your bank needs you to confirm" in m.subject]
    assert sorted(m.to[0] for m in messages) == sorted(
        ["admin@acme.test", "billing@acme.test", invoice.billing_details["email"]]
    )
    link = f"/o/{org.slug}/settings/billing/invoices/{invoice.number}/confirm-payment/"
    assert link in messages[0].body
    assert "Nothing has been charged yet" in messages[0].body
    assert not [m for m in mail.outbox if m.subject.startswith("Payment failed")]


def test_dunning_keeps_its_schedule_without_new_payment_intents_then_confirming_resumes_flows(
    renewal_needs_authentication, org, committed, localstripe
):
    invoice = renewal_needs_authentication
    for day, expected in ((3, "past_due"), (7, "grace"), (14, "suspended")):
        mail.outbox.clear()
        with committed():
            tick(RENEWAL + timedelta(days=day))
        assert subscription(org).status == expected, day
    case = DunningCase.objects.get()
    assert case.steps.get(step="day_3").result.startswith("needs authentication")
    assert len(intents(localstripe, invoice.number)) == 1
    assert invoice.payments.count() == 1
    assert flows(org) == [("paused", "suspension"), ("paused", "suspension"), ("paused", "user")]

    authenticate_payment(confirm_payment_begin(invoice=invoice, now=RENEWAL).client_secret)
    paid_at = RENEWAL + timedelta(days=14, hours=1)
    with committed():
        state = confirm_payment_finish(invoice=invoice, now=paid_at)

    assert state.state == Confirmation.PAID
    assert subscription(org).status == "active"
    assert flows(org) == [("active", ""), ("active", ""), ("paused", "user")]
    assert DunningCase.objects.get().status == "resolved"


def test_day_3_reminder_links_to_confirm_payment(renewal_needs_authentication, org, committed):
    mail.outbox.clear()
    with committed():
        dunning_advance(now=RENEWAL + timedelta(days=3))
    [reminder, *_] = [m for m in mail.outbox if m.subject.startswith("Reminder")]
    assert "Your bank still needs you to confirm the payment" in reminder.body
    assert "/confirm-payment/" in reminder.body


def test_card_set_up_with_its_challenge_renews_without_one(subscribed, org, localstripe):
    add_card(org, number=NEEDS_3DS)  # the SetupIntent's challenge is the mandate
    tick(RENEWAL)
    renewal = Invoice.objects.get(period_start=RENEWAL)
    assert renewal.status == "paid"
    assert renewal.payments.get().status == "succeeded"


def test_a_new_card_replaces_the_waiting_attempt(renewal_needs_authentication, org, localstripe):
    invoice = renewal_needs_authentication
    waiting = invoice.payments.get()
    add_card(org)

    payment = invoice_charge(invoice=invoice, now=RENEWAL + timedelta(days=1), on_session=True)

    waiting.refresh_from_db()
    assert (waiting.status, waiting.failure_code) == ("failed", "superseded")
    assert (payment.attempt, payment.status) == (2, "succeeded")
    assert subscription(org).status == "active"


# -- Races: webhook and page, two tabs ---------------------------------------------------


def test_webhook_before_the_page_returns_records_one_outcome(
    renewal_needs_authentication, org, localstripe, committed
):
    invoice = renewal_needs_authentication
    payment = invoice.payments.get()
    authenticate_payment(confirm_payment_begin(invoice=invoice, now=RENEWAL).client_secret)
    mail.outbox.clear()
    event = succeeded_event(
        payment.processor_id, amount=payment.amount, key=payment.idempotency_key
    )
    with committed():
        webhook = stripe_event_receive(event=event, now=RENEWAL + timedelta(hours=1))
        page = confirm_payment_finish(invoice=invoice, now=RENEWAL + timedelta(hours=1))
        again = confirm_payment_finish(invoice=invoice, now=RENEWAL + timedelta(hours=1))

    assert webhook.outcome == f"succeeded: invoice {invoice.number} paid"
    assert page.state == again.state == Confirmation.PAID
    assert Payment.objects.filter(invoice=invoice, status="succeeded").count() == 1
    receipts = [m for m in mail.outbox if "receipt" in m.subject.lower()]
    assert len(receipts) == 3  # one receipt, to each of the three billing recipients


def test_two_tabs_confirming_at_once_pay_once(renewal_needs_authentication, org, localstripe):
    invoice = renewal_needs_authentication
    first = confirm_payment_begin(invoice=invoice, now=RENEWAL)
    second = confirm_payment_begin(invoice=invoice, now=RENEWAL)
    assert first.client_secret == second.client_secret

    authenticate_payment(first.client_secret)
    with pytest.raises(StripeJsError):
        authenticate_payment(second.client_secret)  # the PaymentIntent is no longer waiting
    confirm_payment_finish(invoice=invoice, now=RENEWAL)
    confirm_payment_finish(invoice=invoice, now=RENEWAL)

    assert Payment.objects.filter(invoice=invoice, status="succeeded").count() == 1
    assert [i["status"] for i in intents(localstripe, invoice.number)] == ["succeeded"]


def test_authentication_required_webhook_for_a_pending_charge_waits_for_the_customer(
    subscribed, org, localstripe, committed
):
    sub = subscription(org)
    invoice = Invoice.objects.get(subscription=sub)
    # A renewal charge whose answer we never got, then Stripe's failure event.
    pending = Payment.objects.create(
        organisation=org,
        invoice=Invoice.objects.create(
            **{
                f.name: getattr(invoice, f.name)
                for f in Invoice._meta.concrete_fields
                if f.name
                not in ("id", "number", "public_id", "status", "amount_paid", "period_start")
            },
            period_start=RENEWAL,
            number="INV-TEST-3DS",
            status="open",
        ),
        method_kind="card",
        attempt=1,
        amount=invoice.total,
        currency=invoice.currency,
        idempotency_key="invoice-test-3ds-attempt-1",
        created_at=RENEWAL,
    )
    event = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "type": "payment_intent.payment_failed",
        "data": {
            "object": {
                "id": "pi_test3ds",
                "amount": pending.amount,
                "currency": "usd",
                "metadata": {"idempotency_key": pending.idempotency_key},
                "last_payment_error": {
                    "code": "authentication_required",
                    "message": "Your card was declined. This transaction requires authentication.",
                },
            }
        },
    }
    with committed():
        result = stripe_event_receive(event=event, now=RENEWAL)

    pending.refresh_from_db()
    assert result.outcome == "needs authentication"
    assert (pending.status, pending.processor_id) == ("requires_action", "pi_test3ds")
    assert subscription(org).status == "past_due"


# -- A late success on an invoice written off -------------------------------------------


def test_late_success_on_an_uncollectible_invoice_pays_it(subscribed, org, localstripe, committed):
    add_card(org, number=CHARGE_FAILS)
    with committed():
        tick(RENEWAL)
    invoice = Invoice.objects.get(status="open")
    payment = invoice.payments.get()
    invoice_mark_uncollectible(invoice=invoice, actor=Actor(user=None), now=RENEWAL)
    event = succeeded_event("pi_late", amount=payment.amount, key=payment.idempotency_key)

    result = stripe_event_receive(event=event, now=RENEWAL + timedelta(days=2))

    invoice.refresh_from_db()
    payment.refresh_from_db()
    assert result.outcome == f"succeeded after recorded failure: invoice {invoice.number} paid"
    assert (invoice.status, invoice.amount_paid) == ("paid", invoice.total)
    assert (payment.status, payment.processor_id) == ("succeeded", "pi_late")


# -- Pages ----------------------------------------------------------------------------------


def confirm_url(org, invoice):
    return reverse("billing:confirm_payment", args=[org.slug, invoice.number])


def test_checkout_page_sends_a_card_that_asks_to_confirm_payment(client_for, org, admin):
    # The card form confirmed the SetupIntent (with its challenge); checkout charges on session.
    from billing.cards import stripe_customer_ensure
    from devkit.stripe_standin import confirmed_setup_intent

    client = client_for(admin)
    setup_intent_id = confirmed_setup_intent(
        customer_id=stripe_customer_ensure(organisation=org), number=AUTH_ALWAYS
    )
    response = client.post(
        reverse("billing:checkout", args=[org.slug]),
        {
            "plan": "professional",
            "billing_cycle": "monthly",
            "currency": "USD",
            "setup_intent_id": setup_intent_id,
        },
    )
    invoice = Invoice.objects.get()
    assert response.status_code == 302
    assert response["Location"] == confirm_url(org, invoice) + "?start=1"

    page = client.get(response["Location"])
    body = page.content.decode()
    assert page.status_code == 200
    assert 'data-client-secret="pi_' in body
    assert "data-autostart" in body
    assert "Confirm payment of $" in body

    state = confirm_payment_state(invoice=invoice)
    authenticate_payment(state.client_secret)
    done = client.post(confirm_url(org, invoice), {"action": "finish"})
    assert done.status_code == 302
    assert done["Location"] == reverse("subscriptions:settings", args=[org.slug])
    assert subscription(org).status == "active"


def test_confirm_page_after_a_failed_challenge_offers_to_try_again(
    client_for, renewal_needs_authentication, org, admin, localstripe
):
    invoice = renewal_needs_authentication
    client = client_for(admin)
    authenticate_payment(
        confirm_payment_begin(invoice=invoice, now=RENEWAL).client_secret, success=False
    )

    failed = client.post(confirm_url(org, invoice), {"action": "finish"})
    assert failed.status_code == 402
    assert "Your bank did not confirm the payment" in failed.content.decode()
    assert 'value="begin"' in failed.content.decode()

    again = client.post(confirm_url(org, invoice), {"action": "begin"})
    assert again["Location"] == confirm_url(org, invoice) + "?start=1"
    assert len(intents(localstripe, invoice.number)) == 1


def test_already_paid_invoice_says_so_and_charges_nothing(client_for, subscribed, org, admin):
    invoice = subscribed
    client = client_for(admin)

    page = client.get(confirm_url(org, invoice))
    posted = client.post(confirm_url(org, invoice), {"action": "begin"})

    assert page.status_code == 200
    assert f"Invoice {invoice.number} is already paid" in page.content.decode()
    assert posted.status_code == 302  # paid: on to where it was for
    assert invoice.payments.count() == 1


def test_invoice_paid_by_bank_transfer_is_never_charged_here(client_for, subscribed, org, admin):
    invoice = Invoice.objects.create(
        **{
            f.name: getattr(subscribed, f.name)
            for f in Invoice._meta.concrete_fields
            if f.name not in ("id", "number", "public_id", "status", "amount_paid", "period_start")
        }
        | {"payment_method_kind": "bank_transfer", "period_start": RENEWAL},
        number="INV-TEST-BANK",
        status="open",
    )
    client = client_for(admin)

    page = client.get(confirm_url(org, invoice))
    posted = client.post(confirm_url(org, invoice), {"action": "begin"})

    assert "is paid by bank transfer" in page.content.decode()
    assert "is paid by bank transfer" in posted.content.decode()
    assert not invoice.payments.exists()


def test_another_organisations_invoice_is_not_found(
    client_for, renewal_needs_authentication, org, other_org, outsider
):
    invoice = renewal_needs_authentication
    client = client_for(outsider)
    other = reverse("billing:confirm_payment", args=[other_org.slug, invoice.number])

    assert client.get(confirm_url(org, invoice)).status_code == 404
    assert client.get(other).status_code == 404
    assert client.post(other, {"action": "begin"}).status_code == 404
    assert invoice.payments.count() == 1


def test_banner_offers_confirm_payment_and_members_are_told_whom_to_ask(
    client_for, renewal_needs_authentication, org, admin, member
):
    invoice = renewal_needs_authentication
    page = client_for(admin).get(reverse("billing:invoices", args=[org.slug])).content.decode()
    assert "Your bank needs you to confirm a payment" in page
    assert confirm_url(org, invoice) in page

    members = client_for(member).get(reverse("usage:sync_info", args=[org.slug]))
    body = members.content.decode()
    assert "Ask an Admin or Billing contact of Acme Trading to confirm the payment" in body
    assert confirm_url(org, invoice) not in body
    assert client_for(member).get(confirm_url(org, invoice)).status_code == 403


def test_retry_payment_sends_the_customer_to_confirm(
    client_for, renewal_needs_authentication, org, admin
):
    invoice = renewal_needs_authentication
    response = client_for(admin).post(reverse("billing:retry_payment", args=[org.slug]))
    assert response["Location"] == confirm_url(org, invoice) + "?start=1"


def test_payment_method_timeline_says_needs_authentication(
    client_for, renewal_needs_authentication, org, admin
):
    page = client_for(admin).get(reverse("billing:payment_method", args=[org.slug]))
    assert "Needs authentication: your bank asked you to confirm the payment." in (
        page.content.decode()
    )


def test_upgrade_page_leads_to_the_upgrade_waiting_for_the_bank_which_can_be_cancelled(
    client_for, subscribed, org, admin, localstripe, time_machine
):
    at = START + timedelta(days=14)
    time_machine.move_to(at, tick=False)
    add_card(org, number=AUTH_ALWAYS)
    client = client_for(admin)
    quote = upgrade_quote(
        subscription=subscription(org), plan=Plan.objects.get(code="enterprise"), now=at
    )
    posted = client.post(
        reverse("billing:upgrade_confirm", args=[org.slug]),
        {"plan": "enterprise", "quoted_total": quote.total},
    )
    invoice = Invoice.objects.get(kind="upgrade")
    assert posted["Location"] == confirm_url(org, invoice) + "?start=1"

    again = client.get(
        reverse("billing:upgrade_confirm", args=[org.slug]) + "?plan=enterprise", follow=True
    )
    body = again.content.decode()
    assert "Your upgrade to Enterprise is waiting for your bank" in body
    assert "Cancel this upgrade and stay on your plan" in body

    cancelled = client.post(confirm_url(org, invoice), {"action": "cancel"}, follow=True)
    assert "The upgrade to Enterprise was cancelled; nothing was charged." in (
        cancelled.content.decode()
    )
    invoice.refresh_from_db()
    assert invoice.status == "void"
    assert subscription(org).plan.code == "professional"
    assert [i["status"] for i in intents(localstripe, invoice.number)] == ["canceled"]
