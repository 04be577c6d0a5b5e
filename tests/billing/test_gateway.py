"""billing.gateway against a real localstripe (tests/stripe_fixtures.py)."""

import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import stripe
from django.conf import settings as django_settings

from billing import gateway
from billing.gateway import CardDetails, ChargeResult, GatewayUnavailable, PaymentError
from core.money import minimum_charge
from devkit.stripe_standin import (
    AMEX,
    AUTH_3DS2,
    AUTH_ALWAYS,
    CHARGE_FAILS,
    DISCOVER,
    MASTERCARD,
    NEEDS_3DS,
    VISA,
    VISA_DECLINED,
    StripeJsError,
    authenticate_payment,
    card_exp_year,
    card_payment_method,
    confirm_card_setup,
    confirmed_setup_intent,
)

DECLINED = "Your card was declined."


def new_customer(organisation_id=7, key="org-7-customer"):
    return gateway.customer_create(
        name="Acme Trading",
        email="billing@acme.test",
        organisation_id=organisation_id,
        idempotency_key=key,
    )


def saved_card(customer_id, number=VISA):
    setup_intent_id = confirmed_setup_intent(customer_id=customer_id, number=number)
    return gateway.setup_intent_card(setup_intent_id=setup_intent_id, customer_id=customer_id)


def charge_on_session(customer_id, payment_method_id, key="invoice-1-attempt-1"):
    return gateway.charge(
        customer_id=customer_id,
        payment_method_id=payment_method_id,
        amount=4900,
        currency="usd",
        idempotency_key=key,
        description="Invoice ACME-2026-0001",
        metadata={"invoice": "ACME-2026-0001"},
        on_session=True,
    )


def charge(customer_id, payment_method_id, key="invoice-1-attempt-1", amount=4900, currency="usd"):
    return gateway.charge(
        customer_id=customer_id,
        payment_method_id=payment_method_id,
        amount=amount,
        currency=currency,
        idempotency_key=key,
        description="Invoice ACME-2026-0001",
        metadata={"invoice_id": 1},
    )


def payment_intents(client):
    return list(client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter())


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- customers --


def test_customer_create_records_the_organisation(localstripe):
    customer_id = new_customer(organisation_id=42)

    customer = localstripe.v1.customers.retrieve(customer_id)
    assert customer_id.startswith("cus_")
    assert (customer["name"], customer["email"]) == ("Acme Trading", "billing@acme.test")
    assert customer["metadata"].to_dict() == {"organisation_id": "42"}


def test_customer_create_twice_with_one_key_makes_one_customer(localstripe):
    first = new_customer(key="org-7-customer")
    second = new_customer(key="org-7-customer")

    assert second == first
    assert [c["id"] for c in localstripe.v1.customers.list().auto_paging_iter()] == [first]


# -------------------------------------------------------------------- cards --


def test_saved_card_details_come_from_the_confirmed_setup_intent(localstripe):
    customer_id = new_customer()
    setup_intent_id, client_secret = gateway.setup_intent_create(customer_id=customer_id)
    assert client_secret.startswith(f"{setup_intent_id}_secret_")

    exp_year = card_exp_year()
    confirm_card_setup(client_secret, number=VISA, exp_month=7, exp_year=exp_year)
    card = gateway.setup_intent_card(setup_intent_id=setup_intent_id, customer_id=customer_id)

    setup_intent = localstripe.v1.setup_intents.retrieve(setup_intent_id)
    assert card == CardDetails(
        payment_method_id=setup_intent["payment_method"],
        brand="visa",
        last4="4242",
        exp_month=7,
        exp_year=exp_year,
    )
    method = localstripe.v1.payment_methods.retrieve(card.payment_method_id)
    assert method["customer"] == customer_id
    assert setup_intent["usage"] == "off_session"


@pytest.mark.parametrize(
    ("number", "brand", "last4"),
    [(MASTERCARD, "mastercard", "4444"), (AMEX, "amex", "0005"), (DISCOVER, "discover", "1117")],
)
def test_card_brand_as_stripe_spells_it(localstripe, number, brand, last4):
    customer_id = new_customer()

    card = saved_card(customer_id, number)

    assert (card.brand, card.last4) == (brand, last4)


def test_card_declined_when_entered(localstripe):
    customer_id = new_customer()
    setup_intent_id, client_secret = gateway.setup_intent_create(customer_id=customer_id)

    with pytest.raises(StripeJsError) as declined:
        confirm_card_setup(client_secret, number=VISA_DECLINED)

    error = declined.value
    assert (error.message, error.type, error.code, error.decline_code) == (
        DECLINED,
        "card_error",
        "card_declined",
        "generic_decline",
    )
    # A page that posts the SetupIntent anyway gets nothing saved.
    with pytest.raises(PaymentError) as not_confirmed:
        gateway.setup_intent_card(setup_intent_id=setup_intent_id, customer_id=customer_id)
    assert not_confirmed.value.message == "The card was not confirmed. Please enter it again."


def test_card_declined_at_attach_not_at_creation(localstripe):
    customer_id = new_customer()
    payment_method_id = card_payment_method(VISA_DECLINED)

    with pytest.raises(stripe.CardError) as declined:
        localstripe.v1.payment_methods.attach(payment_method_id, params={"customer": customer_id})

    assert (declined.value.user_message, declined.value.code) == (DECLINED, "card_declined")


def test_setup_intent_not_confirmed_saves_nothing(localstripe):
    customer_id = new_customer()
    setup_intent_id, _ = gateway.setup_intent_create(customer_id=customer_id)

    with pytest.raises(PaymentError) as error:
        gateway.setup_intent_card(setup_intent_id=setup_intent_id, customer_id=customer_id)

    assert (error.value.message, error.value.code) == (
        "The card was not confirmed. Please enter it again.",
        "setup_intent_not_confirmed",
    )


@pytest.mark.parametrize("whose", ["another customer", "nobody"])
def test_setup_intent_of_another_customer_is_refused(localstripe, whose):
    customer_id = new_customer(organisation_id=1, key="org-1")
    other_customer_id = new_customer(organisation_id=2, key="org-2")
    setup_intent_id = (
        confirmed_setup_intent(customer_id=other_customer_id)
        if whose == "another customer"
        else "seti_doesnotexist"
    )

    with pytest.raises(PaymentError) as error:
        gateway.setup_intent_card(setup_intent_id=setup_intent_id, customer_id=customer_id)

    assert (error.value.message, error.value.code) == (
        "The card was not confirmed. Please enter it again.",
        "setup_intent_not_confirmed",
    )


def test_card_make_default(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id)

    gateway.card_make_default(customer_id=customer_id, payment_method_id=card.payment_method_id)

    customer = localstripe.v1.customers.retrieve(customer_id)
    assert customer["invoice_settings"]["default_payment_method"] == card.payment_method_id


def test_card_detach_is_idempotent(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id)

    gateway.card_detach(payment_method_id=card.payment_method_id)
    gateway.card_detach(payment_method_id=card.payment_method_id)

    assert localstripe.v1.payment_methods.retrieve(card.payment_method_id)["customer"] is None


# ------------------------------------------------------------------ charges --


def test_charge_succeeds(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id)

    result = charge(customer_id, card.payment_method_id, amount=4900, currency="USD")

    [intent] = payment_intents(localstripe)
    assert result == ChargeResult(
        payment_intent_id=intent["id"], status="succeeded", amount=4900, currency="usd"
    )
    assert (intent["customer"], intent["payment_method"], intent["description"]) == (
        customer_id,
        card.payment_method_id,
        "Invoice ACME-2026-0001",
    )
    assert intent["metadata"].to_dict() == {
        "invoice_id": "1",
        "idempotency_key": "invoice-1-attempt-1",
    }


def test_same_idempotency_key_twice_charges_once(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id)

    first = charge(customer_id, card.payment_method_id, key="invoice-1-attempt-1")
    again = charge(customer_id, card.payment_method_id, key="invoice-1-attempt-1")
    other = charge(customer_id, card.payment_method_id, key="invoice-2-attempt-1")

    assert again == first
    assert other.payment_intent_id != first.payment_intent_id
    assert len(payment_intents(localstripe)) == 2


def test_charge_finds_a_payment_intent_stripe_no_longer_knows_the_key_of(localstripe):
    # Stripe forgets idempotency keys after 24 hours; the key in the metadata remains.
    customer_id = new_customer()
    card = saved_card(customer_id)
    earlier = localstripe.v1.payment_intents.create(
        params={
            "customer": customer_id,
            "payment_method": card.payment_method_id,
            "amount": 4900,
            "currency": "usd",
            "confirm": True,
            "off_session": True,
            "metadata": {"idempotency_key": "invoice-1-attempt-1"},
        }
    )

    result = charge(customer_id, card.payment_method_id, key="invoice-1-attempt-1")

    assert result.payment_intent_id == earlier["id"]
    assert len(payment_intents(localstripe)) == 1


def test_same_key_for_another_amount_is_refused(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id)
    charge(customer_id, card.payment_method_id, key="invoice-1-attempt-1", amount=4900)

    with pytest.raises(PaymentError) as error:
        charge(customer_id, card.payment_method_id, key="invoice-1-attempt-1", amount=5000)

    assert error.value.code == "idempotency_key_reused"
    assert len(payment_intents(localstripe)) == 1


def test_card_that_attaches_but_fails_to_charge(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id, CHARGE_FAILS)

    with pytest.raises(PaymentError) as declined:
        charge(customer_id, card.payment_method_id)

    assert type(declined.value) is PaymentError
    assert (declined.value.message, declined.value.code, declined.value.decline_code) == (
        DECLINED,
        "card_declined",
        "generic_decline",
    )
    [intent] = payment_intents(localstripe)
    assert intent["status"] == "requires_payment_method"

    # The same attempt again gives the same answer and does not try the card again.
    with pytest.raises(PaymentError) as again:
        charge(customer_id, card.payment_method_id)
    assert (again.value.message, again.value.code) == (DECLINED, "card_declined")
    assert len(payment_intents(localstripe)) == 1


def test_card_set_up_for_off_session_use_is_charged_without_a_challenge(localstripe):
    # 4000002500003155 asks on setup only: the SetupIntent's mandate covers later renewals.
    customer_id = new_customer()
    card = saved_card(customer_id, NEEDS_3DS)

    result = charge(customer_id, card.payment_method_id)

    assert (result.status, result.amount) == ("succeeded", 4900)


@pytest.mark.parametrize("number", [AUTH_ALWAYS, AUTH_3DS2])
def test_card_that_always_asks_is_refused_off_session_with_its_payment_intent(localstripe, number):
    customer_id = new_customer()
    card = saved_card(customer_id, number)

    with pytest.raises(PaymentError) as error:
        charge(customer_id, card.payment_method_id)

    assert type(error.value) is PaymentError
    assert (error.value.code, error.value.message) == (
        "authentication_required",
        "Your bank needs you to confirm this payment.",
    )
    [intent] = payment_intents(localstripe)
    assert error.value.payment_intent_id == intent["id"]
    assert intent["status"] == "requires_payment_method"
    # The same key again: the same answer, no second PaymentIntent.
    with pytest.raises(PaymentError) as again:
        charge(customer_id, card.payment_method_id)
    assert (again.value.code, again.value.payment_intent_id) == (
        "authentication_required",
        intent["id"],
    )
    assert len(payment_intents(localstripe)) == 1


def test_on_session_charge_waits_for_the_challenge_then_succeeds(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id, NEEDS_3DS)

    result = charge_on_session(customer_id, card.payment_method_id)

    assert result.needs_authentication
    assert not result.paid
    assert result.client_secret.startswith(result.payment_intent_id + "_secret_")
    authenticate_payment(result.client_secret)
    state = gateway.payment_intent_state(payment_intent_id=result.payment_intent_id)
    assert state.paid
    assert (state.amount, state.currency) == (4900, "usd")


def test_failed_challenge_is_confirmed_again_on_the_same_payment_intent(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id, AUTH_ALWAYS)
    first = charge_on_session(customer_id, card.payment_method_id)
    authenticate_payment(first.client_secret, success=False)

    failed = gateway.payment_intent_state(payment_intent_id=first.payment_intent_id)
    again = gateway.payment_intent_authenticate(
        payment_intent_id=first.payment_intent_id, payment_method_id=card.payment_method_id
    )

    assert (failed.status, failed.failure_code) == (
        "requires_payment_method",
        "payment_intent_authentication_failure",
    )
    assert again.needs_authentication
    assert again.payment_intent_id == first.payment_intent_id
    authenticate_payment(again.client_secret)
    assert gateway.payment_intent_state(payment_intent_id=first.payment_intent_id).paid
    assert len(payment_intents(localstripe)) == 1


def test_payment_intent_refused_off_session_is_confirmed_on_session(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id, AUTH_ALWAYS)
    with pytest.raises(PaymentError) as error:
        charge(customer_id, card.payment_method_id)

    ready = gateway.payment_intent_authenticate(
        payment_intent_id=error.value.payment_intent_id, payment_method_id=card.payment_method_id
    )
    authenticate_payment(ready.client_secret)

    assert gateway.payment_intent_state(payment_intent_id=ready.payment_intent_id).paid


def test_cancelled_payment_intent_cannot_be_authenticated(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id, AUTH_ALWAYS)
    first = charge_on_session(customer_id, card.payment_method_id)

    gateway.payment_intent_cancel(payment_intent_id=first.payment_intent_id)
    gateway.payment_intent_cancel(payment_intent_id=first.payment_intent_id)  # idempotent

    with pytest.raises(PaymentError) as error:
        gateway.payment_intent_authenticate(
            payment_intent_id=first.payment_intent_id, payment_method_id=card.payment_method_id
        )
    assert error.value.code == "payment_intent_canceled"


def test_charge_amount_must_be_positive_minor_units():
    with pytest.raises(ValueError, match="positive integer"):
        charge("cus_x", "pm_x", amount=0)


# ------------------------------------------------------------ minimum charge --


@pytest.mark.parametrize(
    ("currency", "minimum"), [("USD", 50), ("usd", 50), ("EUR", 50), ("GBP", 30), ("CHF", 50)]
)
def test_minimum_charge_per_currency(currency, minimum):
    assert minimum_charge(currency) == minimum


def test_every_offered_currency_has_a_minimum_charge():
    for currency in django_settings.CURRENCIES:
        assert minimum_charge(currency) > 0


def test_a_currency_without_a_known_minimum_is_an_error():
    with pytest.raises(ValueError, match="XYZ"):
        minimum_charge("XYZ")


def test_the_stand_in_refuses_a_payment_intent_under_the_minimum_as_stripe_does(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        localstripe.v1.payment_intents.create(
            params={
                "customer": customer_id,
                "payment_method": card.payment_method_id,
                "amount": 29,
                "currency": "gbp",
                "confirm": True,
                "off_session": True,
            }
        )

    error = refused.value
    assert (error.http_status, error.code, error.param) == (400, "amount_too_small", "amount")
    assert error.user_message == "Amount must be at least £0.30 gbp"
    assert payment_intents(localstripe) == []
    # At the minimum it goes through.
    at_minimum = localstripe.v1.payment_intents.create(
        params={"customer": customer_id, "amount": 30, "currency": "gbp"}
    )
    assert at_minimum["amount"] == 30


def test_charge_under_the_minimum_is_refused_before_calling_stripe(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id)

    with pytest.raises(gateway.AmountBelowMinimum) as refused:
        charge(customer_id, card.payment_method_id, amount=49, currency="USD")

    assert isinstance(refused.value, PaymentError)
    assert refused.value.code == "amount_too_small"
    assert refused.value.message == "Amount must be at least $0.50 usd"
    assert payment_intents(localstripe) == []
    assert charge(customer_id, card.payment_method_id, amount=50).amount == 50


def test_payment_intent_find(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id)
    paid = charge(customer_id, card.payment_method_id, key="invoice-1-attempt-1")

    found = gateway.payment_intent_find(
        customer_id=customer_id, idempotency_key="invoice-1-attempt-1"
    )
    missing = gateway.payment_intent_find(
        customer_id=customer_id, idempotency_key="invoice-9-attempt-1"
    )

    assert found == paid
    assert missing is None


def test_payment_intent_find_reports_a_declined_charge(localstripe):
    customer_id = new_customer()
    card = saved_card(customer_id, CHARGE_FAILS)
    with pytest.raises(PaymentError):
        charge(customer_id, card.payment_method_id, key="invoice-1-attempt-1", amount=4900)

    found = gateway.payment_intent_find(
        customer_id=customer_id, idempotency_key="invoice-1-attempt-1"
    )

    assert (found.status, found.amount, found.currency) == ("requires_payment_method", 4900, "usd")


# ------------------------------------------------------------- Stripe down --


def test_unreachable_stripe_is_gateway_unavailable(settings):
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{closed_port()}"
    settings.STRIPE_TIMEOUT_SECONDS = 1
    started = time.monotonic()

    with pytest.raises(GatewayUnavailable) as error:
        charge("cus_x", "pm_x")
    with pytest.raises(GatewayUnavailable):
        new_customer()

    assert time.monotonic() - started < 1
    assert (error.value.code, error.value.message) == (
        "gateway_unavailable",
        "The payment service could not be reached. Please try again in a few minutes.",
    )


def test_stripe_not_answering_in_time_is_gateway_unavailable(settings):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings.STRIPE_API_BASE = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings.STRIPE_TIMEOUT_SECONDS = 1
        started = time.monotonic()

        with pytest.raises(GatewayUnavailable):
            new_customer()

    assert 0.9 <= time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("status", "unavailable"), [(500, True), (503, True), (409, True), (429, True), (400, False)]
)
def test_stripe_error_statuses(settings, status, unavailable):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = b'{"error": {"type": "api_error", "message": "Something went wrong."}}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(PaymentError) as error:
            new_customer()
    finally:
        server.shutdown()
        server.server_close()

    assert isinstance(error.value, GatewayUnavailable) is unavailable
    # Stripe's own wording is for developers, not customers.
    assert "Something went wrong" not in error.value.message


def test_wrong_secret_key_is_a_payment_error_not_a_retry(localstripe, settings):
    settings.STRIPE_SECRET_KEY = "bad"

    with pytest.raises(PaymentError) as error:
        new_customer()

    assert type(error.value) is PaymentError
    assert error.value.message == "The payment could not be processed. Please try again later."


# ----------------------------------------------------------------- settings --


def test_browser_side_settings(settings):
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_123"
    settings.STRIPE_JS_URL = "https://js.stripe.com/v3/"

    assert (gateway.publishable_key(), gateway.js_url()) == (
        "pk_test_123",
        "https://js.stripe.com/v3/",
    )


def test_only_the_gateway_imports_stripe():
    root = Path(django_settings.BASE_DIR)
    importers = set()
    for folder, subfolders, files in os.walk(root):
        # Test code and its support (devkit: the localstripe helpers) may use stripe directly;
        # .venv is the library itself.
        subfolders[:] = [
            d for d in subfolders if not d.startswith((".", "tests", "devkit", "node_modules"))
        ]
        for name in files:
            path = Path(folder, name)
            if name.endswith(".py") and re.search(
                r"^\s*(import stripe|from stripe\b)", path.read_text(), re.MULTILINE
            ):
                importers.add(str(path.relative_to(root)))
    assert importers == {"billing/gateway.py"}
