"""The one door to Stripe: the only module that imports `stripe` (an import-linter contract).

Stripe is our card processor only: a Customer per organisation, SetupIntents to save a
card (confirmed in the browser by Stripe.js), and PaymentIntents to charge it: off-session
when the customer is not there (renewals, dunning), on session when they are (checkout,
Upgrade Plan, Retry Payment), so that a bank asking for 3-D Secure can be answered in the
browser with the PaymentIntent's client secret. Plans, invoices and proration are ours
(docs/architecture.md#billing).

Every failure becomes a `PaymentError` whose `message` is safe to show to the customer
(for declines it is the processor's own wording, e.g. "Your card was declined."). A
`GatewayUnavailable` means Stripe could not be reached or failed: the outcome of a charge
is unknown, so retry it later with the same idempotency key and it is never charged twice.

Webhooks: `webhook_event` checks an incoming request's Stripe-Signature against
STRIPE_WEBHOOK_SECRET and returns the event as a plain dict, or raises `WebhookError`.

Settings are read on every call (tests change them): STRIPE_API_BASE, STRIPE_SECRET_KEY,
STRIPE_PUBLISHABLE_KEY, STRIPE_JS_URL, STRIPE_TIMEOUT_SECONDS, STRIPE_WEBHOOK_SECRET.
"""

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

import stripe
from django.conf import settings

from core.money import minimum_charge, minimum_charge_message

logger = logging.getLogger(__name__)

GENERIC_MESSAGE = "The payment could not be processed. Please try again later."
UNAVAILABLE_MESSAGE = "The payment service could not be reached. Please try again in a few minutes."
AUTHENTICATION_REQUIRED_MESSAGE = "Your bank needs you to confirm this payment."
AUTHENTICATION_FAILED_MESSAGE = (
    "Your bank did not confirm the payment, so nothing was charged. You can try again, or use "
    "another card."
)
SETUP_NOT_CONFIRMED_MESSAGE = "The card was not confirmed. Please enter it again."

# PaymentIntents per page when listing (Stripe's maximum); every page is read.
LIST_PAGE_SIZE = 100

# Off-session charges that end in these states have been (or are being) paid.
_PAID_STATUSES = frozenset({"succeeded", "processing", "requires_capture"})


class GatewayErrorCode(StrEnum):
    """Our own `PaymentError.code`s; the others are Stripe's, passed on as it sends them."""

    UNAVAILABLE = "gateway_unavailable"
    PROCESSOR_ERROR = "processor_error"
    SETUP_INTENT_NOT_CONFIRMED = "setup_intent_not_confirmed"
    AUTHENTICATION_REQUIRED = "authentication_required"
    # Stripe's code when the customer failed (or refused) the bank's challenge.
    AUTHENTICATION_FAILED = "payment_intent_authentication_failure"
    PAYMENT_INTENT_CANCELED = "payment_intent_canceled"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"


class WebhookErrorCode(StrEnum):
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"


class PaymentError(Exception):
    """A payment step failed. `message` can be shown to the customer as is.

    `code` is Stripe's error code (`card_declined`, `expired_card`,
    `authentication_required`, ...) or one of ours (`setup_intent_not_confirmed`,
    `processor_error`, `gateway_unavailable`); `decline_code` is the issuer's reason
    when Stripe gives one (`generic_decline`, `insufficient_funds`, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        decline_code: str | None = None,
        payment_intent_id: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.decline_code = decline_code
        # Set with `authentication_required`: the PaymentIntent the customer must confirm.
        self.payment_intent_id = payment_intent_id


class GatewayUnavailable(PaymentError):
    """Network error, timeout, rate limit, 409 or 5xx: the outcome is UNKNOWN.

    A charge may or may not have happened. Retry later with the same idempotency key;
    `charge` then returns the first attempt's result instead of charging again.
    """


class AmountBelowMinimum(PaymentError):
    """An amount under the processor's minimum charge (core.money.MINIMUM_CHARGE): refused
    before calling Stripe, which would refuse it too. Callers carry such amounts to a later
    invoice instead (docs/architecture.md#decision-amounts-below-the-minimum-charge-are-carried).
    """

    def __init__(self, *, amount: int, currency: str) -> None:
        super().__init__(minimum_charge_message(currency), code="amount_too_small")
        self.amount = amount
        self.currency = currency


def _check_minimum(amount: int, currency: str) -> None:
    if amount < minimum_charge(currency):
        raise AmountBelowMinimum(amount=amount, currency=currency)


class WebhookError(Exception):
    """A webhook request that is not a well-formed event signed by Stripe: answer 400.

    `code` is `bad_signature` (missing, stale or wrong Stripe-Signature) or `malformed`
    (signed, but not a JSON event with an id, a type and a data object). `message` is
    safe to return to the sender.
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class CardDetails:
    payment_method_id: str
    brand: str  # as Stripe spells it: visa, mastercard, amex, discover, ...
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class ChargeResult:
    payment_intent_id: str
    status: str  # Stripe's PaymentIntent status, normally "succeeded"
    amount: int  # minor units
    currency: str  # lower-case ISO code, as Stripe returns it
    # For Stripe.js in the customer's browser when the bank asks for authentication.
    client_secret: str = ""
    # Why the last confirmation failed (Stripe's last_payment_error), when it did.
    failure_code: str = ""
    failure_message: str = ""

    @property
    def paid(self) -> bool:
        return self.status in _PAID_STATUSES

    @property
    def needs_authentication(self) -> bool:
        return self.status == "requires_action"


@dataclass(frozen=True)
class ProcessorCharge:
    """A PaymentIntent as reconciliation compares it with our payments (billing.reconciliation)."""

    payment_intent_id: str
    customer_id: str  # "" when the PaymentIntent has no customer
    status: str  # Stripe's PaymentIntent status: succeeded, requires_payment_method, ...
    amount: int  # minor units
    currency: str  # lower-case ISO code, as Stripe returns it
    amount_refunded: int  # minor units refunded from its charge
    created: datetime  # aware, UTC
    metadata: dict[str, str]  # `charge` puts invoice, payment and idempotency_key here
    payment_method_id: str
    description: str


def publishable_key() -> str:
    """The key Stripe.js is initialised with on the card page."""
    return settings.STRIPE_PUBLISHABLE_KEY


def js_url() -> str:
    """Where the card page loads Stripe.js from (localstripe's mock in development)."""
    return settings.STRIPE_JS_URL


def customer_create(*, name: str, email: str, organisation_id: int, idempotency_key: str) -> str:
    """Create the Stripe Customer of an organisation and return its id (`cus_...`)."""
    with _stripe_errors("customer_create"):
        customer = _client().v1.customers.create(
            params={
                "name": name,
                "email": email,
                "metadata": {"organisation_id": str(organisation_id)},
            },
            options={"idempotency_key": idempotency_key},
        )
    return customer["id"]


def setup_intent_create(*, customer_id: str) -> tuple[str, str]:
    """Start saving a card for later off-session charges: (SetupIntent id, client secret).

    The client secret goes to Stripe.js (`confirmCardSetup`) in the page; the card number
    never reaches our server.
    """
    with _stripe_errors("setup_intent_create"):
        intent = _client().v1.setup_intents.create(
            params={
                "customer": customer_id,
                "usage": "off_session",
                "payment_method_types": ["card"],
            }
        )
    return intent["id"], intent["client_secret"]


def setup_intent_id_from_client_secret(client_secret: str) -> str:
    """The SetupIntent id a client secret belongs to (`seti_..._secret_...` -> `seti_...`)."""
    return client_secret.split("_secret_")[0]


def setup_intent_card(*, setup_intent_id: str, customer_id: str) -> CardDetails:
    """The card saved by a SetupIntent the browser confirmed.

    The SetupIntent id comes back from the browser, so it is checked: it must belong to
    `customer_id` and have succeeded, else PaymentError (one message for every case, so
    another customer's SetupIntent ids cannot be probed).
    """
    with _stripe_errors("setup_intent_card"):
        try:
            intent = _client().v1.setup_intents.retrieve(
                setup_intent_id, params={"expand": ["payment_method"]}
            )
        except stripe.InvalidRequestError as e:
            if e.http_status != 404:
                raise
            intent = None
    if intent is None or intent["customer"] != customer_id or intent["status"] != "succeeded":
        logger.warning(
            "SetupIntent %s not usable for customer %s: %s",
            setup_intent_id,
            customer_id,
            "not found"
            if intent is None
            else f"customer {intent['customer']}, status {intent['status']}",
        )
        raise PaymentError(
            SETUP_NOT_CONFIRMED_MESSAGE, code=GatewayErrorCode.SETUP_INTENT_NOT_CONFIRMED
        )
    payment_method = intent["payment_method"]
    if isinstance(payment_method, str):  # not expanded
        with _stripe_errors("setup_intent_card"):
            payment_method = _client().v1.payment_methods.retrieve(payment_method)
    card = payment_method["card"]
    return CardDetails(
        payment_method_id=payment_method["id"],
        brand=card["brand"],
        last4=card["last4"],
        exp_month=int(card["exp_month"]),
        exp_year=int(card["exp_year"]),
    )


def card_make_default(*, customer_id: str, payment_method_id: str) -> None:
    """Make the card the one Stripe (and our charges) use for the customer."""
    with _stripe_errors("card_make_default"):
        _client().v1.customers.update(
            customer_id,
            params={"invoice_settings": {"default_payment_method": payment_method_id}},
        )


def card_detach(*, payment_method_id: str) -> None:
    """Detach a card from its customer; it can never be charged again. Idempotent."""
    with _stripe_errors("card_detach"):
        try:
            _client().v1.payment_methods.detach(payment_method_id)
        except stripe.InvalidRequestError as e:
            # Stripe: "The payment method you provided is not attached to a customer so
            # detachment is impossible." Detached is what we wanted.
            if "not attached" not in (e.user_message or ""):
                raise


def charge(
    *,
    customer_id: str,
    payment_method_id: str,
    amount: int,
    currency: str,
    idempotency_key: str,
    description: str,
    metadata: dict[str, Any],
    on_session: bool = False,
) -> ChargeResult:
    """Charge a saved card and confirm at once: off-session (the customer is not there), or
    `on_session` while they wait on our page.

    On session, a card whose bank asks for 3-D Secure returns status `requires_action` with
    the client secret for Stripe.js (`needs_authentication`). Off-session, Stripe refuses it:
    PaymentError `authentication_required` with `payment_intent_id`, the PaymentIntent the
    customer can confirm later on session (`payment_intent_authenticate`).

    `idempotency_key` must be derived from our own row (e.g. invoice + attempt number):
    calling again with the same key never charges twice. It is sent as Stripe's
    Idempotency-Key (Stripe replays the first answer for 24 hours) and stored in the
    PaymentIntent's metadata; before creating a PaymentIntent we look for one carrying
    the key, which also covers retries after Stripe has forgotten the key. A key that
    already ran returns (or raises) that first outcome.

    Raises PaymentError for declines (Stripe's message, code, decline_code) and for cards
    that need 3-D Secure off-session (code `authentication_required`), GatewayUnavailable
    when the outcome is unknown.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"amount must be a positive integer of minor units, not {amount!r}")
    _check_minimum(amount, currency)
    currency = currency.lower()
    intent = _payment_intent_with_key(customer_id=customer_id, idempotency_key=idempotency_key)
    if intent is not None:
        _check_same_charge(
            intent, amount=amount, currency=currency, idempotency_key=idempotency_key
        )
    else:
        with _stripe_errors("charge", idempotency_key=idempotency_key):
            intent = _client().v1.payment_intents.create(
                params={
                    "customer": customer_id,
                    "payment_method": payment_method_id,
                    # Explicit, or Stripe's automatic payment methods want a return_url.
                    "payment_method_types": ["card"],
                    "amount": amount,
                    "currency": currency,
                    "confirm": True,
                    **({} if on_session else {"off_session": True}),
                    "description": description,
                    "metadata": {
                        **{key: str(value) for key, value in metadata.items()},
                        "idempotency_key": idempotency_key,
                    },
                },
                options={"idempotency_key": idempotency_key},
            )
    return _charge_outcome(intent, on_session=on_session)


def payment_intent_authenticate(*, payment_intent_id: str, payment_method_id: str) -> ChargeResult:
    """Make a PaymentIntent that waits for the customer ready for Stripe.js, on session.

    The same PaymentIntent every time, never a new one: one waiting for authentication is
    returned as it is (with its client secret); one whose authentication failed, or that was
    refused off-session, is confirmed again on session with the card, and the bank asks
    again. A PaymentIntent paid meanwhile is returned paid. Declines raise PaymentError as
    `charge` does; a cancelled PaymentIntent raises `payment_intent_canceled`.
    """
    with _stripe_errors("payment_intent_authenticate"):
        intent = _client().v1.payment_intents.retrieve(payment_intent_id)
        if intent["status"] in ("requires_payment_method", "requires_confirmation"):
            intent = _client().v1.payment_intents.confirm(
                payment_intent_id, params={"payment_method": payment_method_id}
            )
    if intent["status"] == "canceled":
        raise PaymentError(GENERIC_MESSAGE, code=GatewayErrorCode.PAYMENT_INTENT_CANCELED)
    return _charge_outcome(intent, on_session=True)


def payment_intent_state(*, payment_intent_id: str) -> ChargeResult:
    """Where a PaymentIntent stands now, with why its last confirmation failed: what the
    customer's browser did (Stripe.js) is learnt from Stripe, never from the browser."""
    with _stripe_errors("payment_intent_state"):
        intent = _client().v1.payment_intents.retrieve(payment_intent_id)
    error = intent["last_payment_error"]
    error = error.to_dict() if error is not None else {}
    return ChargeResult(
        payment_intent_id=intent["id"],
        status=intent["status"],
        amount=intent["amount"],
        currency=intent["currency"],
        client_secret=intent["client_secret"] or "",
        failure_code=error.get("code") or "",
        failure_message=error.get("message") or "",
    )


def payment_intent_cancel(*, payment_intent_id: str) -> None:
    """Cancel a PaymentIntent nobody will confirm any more (an abandoned upgrade). Idempotent:
    one already cancelled or paid is left as it is."""
    with _stripe_errors("payment_intent_cancel"):
        try:
            _client().v1.payment_intents.cancel(payment_intent_id)
        except stripe.InvalidRequestError as e:
            if e.http_status not in (400, 404):
                raise
            logger.info("PaymentIntent %s not cancelled: %s", payment_intent_id, e.user_message)


def _check_same_charge(intent, *, amount: int, currency: str, idempotency_key: str) -> None:
    """A key that already ran must be for the same charge: its first outcome is then the
    answer; for another amount or currency it is refused."""
    if (intent["amount"], intent["currency"]) != (amount, currency):
        logger.error(
            "Idempotency key %s reused for another charge: %s %s, first %s %s (%s)",
            idempotency_key,
            amount,
            currency,
            intent["amount"],
            intent["currency"],
            intent["id"],
        )
        raise PaymentError(GENERIC_MESSAGE, code=GatewayErrorCode.IDEMPOTENCY_KEY_REUSED)
    logger.info("Charge %s was already attempted: %s", idempotency_key, intent["id"])


def payment_intent_find(*, customer_id: str, idempotency_key: str) -> ChargeResult | None:
    """The PaymentIntent `charge` made with this key, whatever its status, or None.

    For reconciling charges whose outcome was unknown (GatewayUnavailable). Looks through
    the customer's PaymentIntents (Stripe's list is up to date, its Search API may lag by
    a minute). Raises GatewayUnavailable if Stripe cannot be asked.
    """
    intent = _payment_intent_with_key(customer_id=customer_id, idempotency_key=idempotency_key)
    return None if intent is None else _charge_result(intent)


def payment_intents_since(
    *, created_after: datetime, created_before: datetime | None = None
) -> list[ProcessorCharge]:
    """Every PaymentIntent created from `created_after` to `created_before` (inclusive), all
    pages, whatever its status or customer. For reconciliation. Raises GatewayUnavailable
    (or PaymentError) when Stripe cannot be asked: a partial list is never returned.

    The charge of each is expanded (`latest_charge`) for its refunded amount.
    """
    low = int(created_after.timestamp())
    high = None if created_before is None else int(created_before.timestamp())
    params: dict[str, Any] = {"limit": LIST_PAGE_SIZE, "expand": ["data.latest_charge"]}
    if _filters_by_created():
        params["created"] = {"gte": low} if high is None else {"gte": low, "lte": high}
    charges = []
    with _stripe_errors("payment_intents_since"):
        for intent in _client().v1.payment_intents.list(params=params).auto_paging_iter():
            # Cut here too: localstripe refuses a `created` filter (400 "Unexpected created"),
            # so against it every PaymentIntent is listed (oldest first) and cut here.
            if intent["created"] >= low and (high is None or intent["created"] <= high):
                charges.append(_processor_charge(intent))
    return charges


def payment_intent_get(*, payment_intent_id: str) -> ProcessorCharge | None:
    """One PaymentIntent by id, or None when Stripe has no such PaymentIntent."""
    with _stripe_errors("payment_intent_get"):
        try:
            intent = _client().v1.payment_intents.retrieve(
                payment_intent_id, params={"expand": ["latest_charge"]}
            )
        except stripe.InvalidRequestError as e:
            if e.http_status != 404:
                raise
            return None
    return _processor_charge(intent)


@dataclass(frozen=True)
class ProcessorRefund:
    """A refund of a PaymentIntent's charge, as Stripe has it."""

    refund_id: str
    payment_intent_id: str
    amount: int  # minor units
    currency: str  # lower-case ISO code
    status: str  # succeeded, pending, failed, canceled, requires_action
    created: datetime  # aware, UTC
    metadata: dict[str, str]  # `refund_create` puts credit_note and idempotency_key here


def refund_create(
    *,
    payment_intent_id: str,
    amount: int,
    idempotency_key: str,
    metadata: dict[str, Any],
) -> ProcessorRefund:
    """Refund `amount` of a PaymentIntent's charge to the card.

    `idempotency_key` comes from our own row (the Refund): it is sent as Stripe's
    Idempotency-Key and kept in the refund's metadata, and a refund already made with it is
    returned instead of refunding again (which also covers a retry after Stripe forgot the
    key). Raises PaymentError when Stripe refuses (more than is left to refund, a charge
    that failed) and GatewayUnavailable when the outcome is unknown: retry with the same key.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"amount must be a positive integer of minor units, not {amount!r}")
    for refund in refunds_of(payment_intent_id=payment_intent_id):
        if refund.metadata.get("idempotency_key") == idempotency_key:
            return refund
    with _stripe_errors("refund", idempotency_key=idempotency_key):
        refund = _client().v1.refunds.create(
            params={
                "payment_intent": payment_intent_id,
                "amount": amount,
                "metadata": {
                    **{key: str(value) for key, value in metadata.items()},
                    "idempotency_key": idempotency_key,
                },
            },
            options={"idempotency_key": idempotency_key},
        )
    return _processor_refund(refund, payment_intent_id=payment_intent_id)


def refunds_of(*, payment_intent_id: str) -> list[ProcessorRefund]:
    """Every refund of a PaymentIntent's charge, oldest first (all pages)."""
    refunds = []
    with _stripe_errors("refunds_of"):
        listed = _client().v1.refunds.list(
            params={"payment_intent": payment_intent_id, "limit": LIST_PAGE_SIZE}
        )
        for refund in listed.auto_paging_iter():
            refunds.append(_processor_refund(refund, payment_intent_id=payment_intent_id))
    return sorted(refunds, key=lambda refund: (refund.created, refund.refund_id))


def _processor_refund(refund: Any, *, payment_intent_id: str) -> ProcessorRefund:
    metadata = refund["metadata"]
    metadata = metadata.to_dict() if hasattr(metadata, "to_dict") else dict(metadata or {})
    return ProcessorRefund(
        refund_id=refund["id"],
        payment_intent_id=getattr(refund, "payment_intent", None) or payment_intent_id,
        amount=int(refund["amount"]),
        currency=refund["currency"],
        status=refund["status"],
        created=datetime.fromtimestamp(refund["created"], tz=UTC),
        metadata={key: str(value) for key, value in metadata.items()},
    )


def payment_intent_with_key(*, customer_id: str, idempotency_key: str) -> ProcessorCharge | None:
    """The PaymentIntent `charge` made with this key (as `payment_intent_find`), in full."""
    intent = _payment_intent_with_key(customer_id=customer_id, idempotency_key=idempotency_key)
    return None if intent is None else payment_intent_get(payment_intent_id=intent["id"])


def setup_intent_confirm_test_card(*, setup_intent_id: str, number: str) -> None:
    """Development only (seed_demo): confirm a SetupIntent with a test card number, as
    Stripe.js would in a browser. Refused unless the API base is a local stand-in."""
    if not settings.DEBUG or "stripe.com" in settings.STRIPE_API_BASE:
        raise PaymentError("Test cards can only be used against the local Stripe stand-in.")
    with _stripe_errors("setup_intent_confirm_test_card"):
        method = _client().v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            }
        )
        _client().v1.setup_intents.confirm(setup_intent_id, params={"payment_method": method["id"]})


def customer_exists(*, customer_id: str) -> bool:
    """Whether the processor still knows this customer (a restarted stand-in forgets all)."""
    try:
        customer = _client().v1.customers.retrieve(customer_id)
    except stripe.InvalidRequestError:
        return False  # "No such customer": expected after a stand-in restart, not an error
    except stripe.StripeError:
        with _stripe_errors("customer_retrieve"):
            raise
    return not ("deleted" in customer and customer["deleted"])


def webhook_event(*, payload: bytes, signature: str) -> dict[str, Any]:
    """The event Stripe POSTed to our webhook endpoint, verified, as a plain dict.

    `payload` is the raw request body and `signature` the Stripe-Signature header: an
    HMAC-SHA256 of "{timestamp}.{body}" with STRIPE_WEBHOOK_SECRET, made at most five
    minutes ago (Stripe's default tolerance, against replays). Raises WebhookError when
    the signature is missing or wrong (code `bad_signature`) or the signed body is not an
    event (code `malformed`). The dict is the body as sent (`id`, `type`, `data.object`, ...).
    """
    try:
        stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    except stripe.SignatureVerificationError as e:
        logger.warning("Stripe webhook refused: %s", e.user_message or e)
        raise WebhookError(
            "Invalid Stripe-Signature header.", code=WebhookErrorCode.BAD_SIGNATURE
        ) from e
    except (ValueError, TypeError, AttributeError) as e:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; AttributeError is JSON
        # that is not an object (stripe calls .get on it).
        raise WebhookError("The body is not a JSON event.", code=WebhookErrorCode.MALFORMED) from e
    event = json.loads(payload)
    data = event.get("data")
    if not (
        isinstance(event.get("id"), str)
        and event["id"]
        and isinstance(event.get("type"), str)
        and event["type"]
        and isinstance(data, dict)
        and isinstance(data.get("object"), dict)
    ):
        raise WebhookError("The body is not a JSON event.", code=WebhookErrorCode.MALFORMED)
    return event


# ------------------------------------------------------------------- internals --


def _client() -> stripe.StripeClient:
    return _client_for(
        settings.STRIPE_SECRET_KEY,
        settings.STRIPE_API_BASE,
        settings.STRIPE_TIMEOUT_SECONDS,
        os.getpid(),
    )


@lru_cache(maxsize=8)
def _client_for(api_key: str, api_base: str, timeout: int, pid: int) -> stripe.StripeClient:
    # One client (and HTTP connection pool) per settings and per process: a pool must not
    # be shared with a forked child (Celery prefork, gunicorn --preload).
    return stripe.StripeClient(
        api_key=api_key,
        base_addresses={"api": api_base},
        # Retrying is our job (same idempotency key, later): an automatic retry of a
        # timed-out charge would hold the caller for another timeout.
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def _payment_intent_with_key(*, customer_id: str, idempotency_key: str) -> Any | None:
    with _stripe_errors("payment_intent_find", idempotency_key=idempotency_key):
        intents = _client().v1.payment_intents.list(params={"customer": customer_id, "limit": 100})
        for intent in intents.auto_paging_iter():
            if intent["metadata"].to_dict().get("idempotency_key") == idempotency_key:
                return intent
    return None


def _charge_result(intent: Any) -> ChargeResult:
    return ChargeResult(
        payment_intent_id=intent["id"],
        status=intent["status"],
        amount=intent["amount"],
        currency=intent["currency"],
    )


def _filters_by_created() -> bool:
    # localstripe (our stand-in in development and tests) cannot filter PaymentIntents by
    # `created`; Stripe can, and lists newest first, so there the filter keeps the walk short.
    return "stripe.com" in settings.STRIPE_API_BASE


def _processor_charge(intent: Any) -> ProcessorCharge:
    charge = intent["latest_charge"]
    # Expanded on request (a bare id otherwise); None until the PaymentIntent is confirmed.
    expanded = charge is not None and not isinstance(charge, str)
    refunded = charge["amount_refunded"] if expanded else 0
    method = intent["payment_method"]
    description = getattr(intent, "description", None)  # stripe objects have no .get()
    return ProcessorCharge(
        payment_intent_id=intent["id"],
        customer_id=intent["customer"] or "",
        status=intent["status"],
        amount=intent["amount"],
        currency=intent["currency"],
        amount_refunded=int(refunded or 0),
        created=datetime.fromtimestamp(intent["created"], tz=UTC),
        metadata={key: str(value) for key, value in intent["metadata"].to_dict().items()},
        payment_method_id=(method if isinstance(method, str) else method["id"]) if method else "",
        description=description or "",
    )


def _charge_outcome(intent: Any, *, on_session: bool) -> ChargeResult:
    """The result of a confirmed PaymentIntent, or the PaymentError it means."""
    status = intent["status"]
    if status in _PAID_STATUSES:
        return _charge_result(intent)
    if status == "requires_action":
        if on_session:
            return ChargeResult(
                payment_intent_id=intent["id"],
                status=status,
                amount=intent["amount"],
                currency=intent["currency"],
                client_secret=intent["client_secret"],
            )
        # Stripe refuses an off-session confirm with an authentication_required error
        # instead; a PaymentIntent first confirmed on session can still be in this state.
        raise PaymentError(
            AUTHENTICATION_REQUIRED_MESSAGE,
            code=GatewayErrorCode.AUTHENTICATION_REQUIRED,
            payment_intent_id=intent["id"],
        )
    error = intent["last_payment_error"]
    if error is not None:  # declined on an earlier call with the same key
        error = error.to_dict()
        if error.get("code") == GatewayErrorCode.AUTHENTICATION_REQUIRED:
            raise PaymentError(
                AUTHENTICATION_REQUIRED_MESSAGE,
                code=GatewayErrorCode.AUTHENTICATION_REQUIRED,
                payment_intent_id=intent["id"],
            )
        raise PaymentError(
            error.get("message") or GENERIC_MESSAGE,
            code=error.get("code"),
            decline_code=error.get("decline_code"),
        )
    logger.error("PaymentIntent %s unexpectedly in status %s", intent["id"], status)
    raise PaymentError(GENERIC_MESSAGE, code=GatewayErrorCode.PROCESSOR_ERROR)


@contextmanager
def _stripe_errors(operation: str, *, idempotency_key: str | None = None) -> Iterator[None]:
    """Turn stripe's exceptions into ours. Logs ids and codes only, never card data."""
    try:
        yield
    except stripe.CardError as e:
        decline_code = e.error.decline_code if e.error is not None else None
        logger.info(
            "Stripe %s declined (key %s): code=%s decline_code=%s request=%s",
            operation,
            idempotency_key,
            e.code,
            decline_code,
            e.request_id,
        )
        if GatewayErrorCode.AUTHENTICATION_REQUIRED in (e.code, decline_code):
            intent = getattr(e.error, "payment_intent", None) if e.error is not None else None
            raise PaymentError(
                AUTHENTICATION_REQUIRED_MESSAGE,
                code=GatewayErrorCode.AUTHENTICATION_REQUIRED,
                decline_code=decline_code,
                payment_intent_id=(intent["id"] if intent else "") or "",
            ) from e
        raise PaymentError(
            e.user_message or GENERIC_MESSAGE, code=e.code, decline_code=decline_code
        ) from e
    except (stripe.APIConnectionError, stripe.RateLimitError) as e:
        _log_unavailable(operation, idempotency_key, e)
        raise GatewayUnavailable(UNAVAILABLE_MESSAGE, code=GatewayErrorCode.UNAVAILABLE) from e
    except stripe.APIError as e:
        # 5xx, and 409 (the same idempotency key is still running): outcome unknown.
        if e.http_status is None or e.http_status >= 500 or e.http_status == 409:
            _log_unavailable(operation, idempotency_key, e)
            raise GatewayUnavailable(UNAVAILABLE_MESSAGE, code=GatewayErrorCode.UNAVAILABLE) from e
        _log_rejected(operation, idempotency_key, e)
        raise PaymentError(GENERIC_MESSAGE, code=GatewayErrorCode.PROCESSOR_ERROR) from e
    except stripe.StripeError as e:
        # InvalidRequestError, IdempotencyError, AuthenticationError, PermissionError: a bug
        # or a configuration error on our side, with a message not meant for customers.
        _log_rejected(operation, idempotency_key, e)
        raise PaymentError(GENERIC_MESSAGE, code=e.code or GatewayErrorCode.PROCESSOR_ERROR) from e


def _log_unavailable(operation: str, idempotency_key: str | None, e: stripe.StripeError) -> None:
    logger.warning(
        "Stripe %s outcome unknown (key %s): %s http_status=%s request=%s",
        operation,
        idempotency_key,
        type(e).__name__,
        e.http_status,
        e.request_id,
    )


def _log_rejected(operation: str, idempotency_key: str | None, e: stripe.StripeError) -> None:
    logger.error(
        "Stripe %s rejected (key %s): %s http_status=%s code=%s message=%s request=%s",
        operation,
        idempotency_key,
        type(e).__name__,
        e.http_status,
        e.code,
        e.user_message,
        e.request_id,
    )
