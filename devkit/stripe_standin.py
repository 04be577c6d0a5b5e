"""Client helpers for localstripe, the Stripe stand-in the tests, `make run` and the benches use.

localstripe runs as a service (scripts/services.sh) at settings.STRIPE_API_BASE. These helpers do
what a browser running Stripe.js would (create and confirm card SetupIntents), drive localstripe's
own configuration endpoints (`standin_request`), and register webhooks. The pytest fixture that
empties localstripe before a test is in tests/stripe_fixtures.py.

    customer_id = gateway.customer_create(...)
    setup_intent_id = confirmed_setup_intent(customer_id=customer_id, number=AMEX)

    with pytest.raises(StripeJsError) as declined:
        confirmed_setup_intent(customer_id=customer_id, number=VISA_DECLINED)
    assert declined.value.message == "Your card was declined."

Webhooks: `register_webhook(url)` has localstripe POST its events to `url` (a live
server's /webhooks/stripe/), signed with settings.STRIPE_WEBHOOK_SECRET, one second after
they happen; `unregister_webhook(webhook_id)` stops it. Registrations survive
`DELETE /_config/data` and are shared by everyone using the same localstripe, so each
test run uses its own id and unregisters at the end.

Disputes (chargebacks): `dispute_open(payment_intent_id)`, `dispute_update(dispute_id)` and
`dispute_close(dispute_id, status="lost")` play the cardholder and their bank. Each returns
the Stripe Event it made (`charge.dispute.created|updated|closed`, the Dispute in
`data.object`), which localstripe also delivers to the webhooks registered for it
(`register_webhook(url, events=DISPUTE_EVENTS)`); a test may deliver it itself, in any order
or twice.

Refunds: localstripe refuses one larger than what is left of the charge, as Stripe does, and
sends `charge.refunded` to the webhooks registered for it (`events=REFUND_EVENTS`).
`refund_in_dashboard(payment_intent_id, amount)` refunds as ops would in the Stripe dashboard:
without the metadata our own refunds carry.

A page test whose view created the SetupIntent passes the client secret it rendered to
`confirm_card_setup(client_secret, number=...)`, then posts the SetupIntent id back.

Where localstripe declines the test cards (as checked against its code):
- VISA_DECLINED 4000000000000002 (and ...9995, ...9987, ...0069, ...0127, ...0119):
  creating the PaymentMethod succeeds; attaching it to a customer, or confirming a
  SetupIntent with it, answers 402 card_error "Your card was declined." (code
  card_declined, decline_code generic_decline) and the SetupIntent becomes `canceled`
  (Stripe leaves it `requires_payment_method`).
- CHARGE_FAILS 4000000000000341: the SetupIntent succeeds; every charge is declined with
  the same 402 and the PaymentIntent stays `requires_payment_method`.
- 3-D Secure, as on Stripe (scripts/localstripe_server.py): the SetupIntent of each needs
  authentication (`confirm_card_setup(..., authenticate=True)` completes it, as a user
  clicking "Complete authentication" in the Stripe.js mock would); an on-session charge
  waits `requires_action` for `authenticate_payment(client_secret)` (what the mock's
  `confirmCardPayment` does).
  - NEEDS_3DS 4000002500003155: once set up, its off-session charges go through.
  - AUTH_ALWAYS 4000002760003184 and AUTH_3DS2 4000000000003220: every charge asks; an
    off-session one is refused with `authentication_required` and waits for the customer.
"""

import json
import os
import urllib.error
import urllib.request
from datetime import datetime
from urllib.parse import urlsplit

import stripe
import time_machine
from django.conf import settings

from billing import gateway

VISA = "4242424242424242"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"
DISCOVER = "6011111111111117"
VISA_DECLINED = "4000000000000002"
CHARGE_FAILS = "4000000000000341"
NEEDS_3DS = "4000002500003155"
AUTH_ALWAYS = "4000002760003184"
AUTH_3DS2 = "4000000000003220"

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StripeJsError(Exception):
    """The `{error: ...}` Stripe.js hands to the page when confirming a card fails.

    `message` is what the page shows, e.g. "Your card was declined."; `code` and
    `decline_code` as Stripe gives them (None when Stripe.js makes the error up).
    """

    def __init__(self, error: dict) -> None:
        super().__init__(error.get("message"))
        self.message = error.get("message")
        self.type = error.get("type")
        self.code = error.get("code")
        self.decline_code = error.get("decline_code")


def card_exp_year() -> int:
    """A year a new test card is good until: four years on by the stand-in's clock, the
    machine's (not a clock the test travelled to), as Stripe refuses an expired card."""
    hatch = time_machine.escape_hatch
    now = hatch.datetime.datetime.now() if hatch.is_travelling() else datetime.now()
    return now.year + 4


def card_payment_method(
    number: str = VISA, exp_month: int = 12, exp_year: int | None = None, cvc: str = "123"
) -> str:
    """Create a card PaymentMethod, as Stripe.js's createPaymentMethod would; its id.

    It is not attached to anyone. localstripe never declines here: a VISA_DECLINED card
    is declined when attached to a customer (`POST /v1/payment_methods/<id>/attach`) or
    used to confirm a SetupIntent, with a 402 "Your card was declined.".
    """
    card = {"number": number, "exp_month": exp_month, "exp_year": exp_year or card_exp_year()}
    method = standin_client().v1.payment_methods.create(
        params={"type": "card", "card": {**card, "cvc": cvc}}
    )
    return method["id"]


def confirmed_setup_intent(
    *,
    customer_id: str,
    number: str = VISA,
    exp_month: int = 12,
    exp_year: int | None = None,
    cvc: str = "123",
) -> str:
    """A SetupIntent of the customer, confirmed with a new card as the card page would.

    Creates it as billing.gateway.setup_intent_create does, then `confirm_card_setup`.
    Returns its id; raises StripeJsError when the card is declined.
    """
    intent = standin_client().v1.setup_intents.create(
        params={"customer": customer_id, "usage": "off_session", "payment_method_types": ["card"]}
    )
    confirm_card_setup(
        intent["client_secret"], number=number, exp_month=exp_month, exp_year=exp_year, cvc=cvc
    )
    return intent["id"]


def confirm_card_setup(
    client_secret: str,
    *,
    number: str = VISA,
    exp_month: int = 12,
    exp_year: int | None = None,
    cvc: str = "123",
    postal_code: str = "10001",
    authenticate: bool = True,
) -> str:
    """Do what Stripe.js's `confirmCardSetup(clientSecret, {payment_method: {card}})` does.

    The same requests as localstripe's Stripe.js mock, with the publishable key, card
    fields as the card element sends them (strings). If the card asks for 3-D Secure,
    `authenticate` says whether the user completes it. Returns the SetupIntent id;
    raises StripeJsError with the error the page would get.
    """
    setup_intent_id = gateway.setup_intent_id_from_client_secret(client_secret)
    path = f"/v1/setup_intents/{setup_intent_id}/confirm"
    payload = {
        "key": settings.STRIPE_PUBLISHABLE_KEY,
        "use_stripe_sdk": True,
        "client_secret": client_secret,
        "payment_method_data": {
            "type": "card",
            "card": {
                "number": number,
                "exp_month": str(exp_month),
                "exp_year": str(exp_year or card_exp_year()),
                "cvc": cvc,
            },
            "billing_details": {"address": {"postal_code": postal_code}},
        },
    }
    status, body = standin_request(path, payload)
    if status == 200 and body.get("status") == "requires_action":
        if not authenticate:
            path = f"/v1/setup_intents/{setup_intent_id}/cancel"
        status, body = standin_request(
            path, {k: payload[k] for k in ("key", "use_stripe_sdk", "client_secret")}
        )
        if status == 200 and body.get("status") != "succeeded":
            raise StripeJsError(
                {
                    "message": "The latest attempt to set up the payment method has failed "
                    "because authentication failed."
                }
            )
    if status != 200 or body.get("error"):
        raise StripeJsError(body.get("error") or {"message": f"HTTP {status}"})
    if body.get("status") != "succeeded":
        raise StripeJsError({"message": f"setup_intent has status {body.get('status')}"})
    return setup_intent_id


def authenticate_payment(client_secret: str, *, success: bool = True) -> dict:
    """Do what the Stripe.js mock's `confirmCardPayment(clientSecret)` does once the user
    clicks "Complete authentication" (or, `success=False`, "Fail authentication"): the
    PaymentIntent as the page receives it. Raises StripeJsError with the page's error."""
    payment_intent_id = client_secret.split("_secret_")[0]
    status, body = standin_request(
        f"/v1/payment_intents/{payment_intent_id}/_authenticate?success={str(success).lower()}",
        {"key": settings.STRIPE_PUBLISHABLE_KEY, "client_secret": client_secret},
    )
    if status != 200 or body.get("error"):
        raise StripeJsError(body.get("error") or {"message": f"HTTP {status}"})
    return body


PAYMENT_INTENT_EVENTS = ("payment_intent.succeeded", "payment_intent.payment_failed")
DISPUTE_EVENTS = ("charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed")
REFUND_EVENTS = ("charge.refunded",)
# localstripe cannot delete a webhook: this event filter matches no event it sends.
_NO_EVENTS = ["webhook.disabled"]


def register_webhook(
    url: str,
    *,
    events: tuple[str, ...] | None = PAYMENT_INTENT_EVENTS,
    secret: str | None = None,
    webhook_id: str | None = None,
) -> str:
    """Have localstripe POST its events of these types (None: all) to `url`; the webhook id.

    Signed as Stripe does (Stripe-Signature `t=...,v1=...`) with `secret`, by default
    settings.STRIPE_WEBHOOK_SECRET. Registering an id again replaces it. Delivered once,
    a second after the event, never retried (unlike Stripe).
    """
    if urlsplit(url).hostname not in LOOPBACK:
        raise ValueError(f"webhooks go to loopback only, not {url}")
    webhook_id = webhook_id or f"tests-{os.getpid()}"
    payload = {"url": url, "secret": secret or settings.STRIPE_WEBHOOK_SECRET}
    if events is not None:
        payload["events"] = list(events)
    status, body = standin_request(f"/_config/webhooks/{webhook_id}", payload)
    if status != 200:
        raise RuntimeError(f"localstripe refused the webhook {webhook_id}: {status} {body}")
    return webhook_id


def unregister_webhook(webhook_id: str) -> None:
    """Stop localstripe's deliveries to a webhook registered by `register_webhook`."""
    status, body = standin_request(
        f"/_config/webhooks/{webhook_id}",
        {"url": "http://127.0.0.1:9/unregistered/", "secret": "-", "events": _NO_EVENTS},
    )
    if status != 200:
        raise RuntimeError(f"localstripe refused to unregister {webhook_id}: {status} {body}")


def dispute_open(
    payment_intent_id: str,
    *,
    amount: int | None = None,
    reason: str = "fraudulent",
    inquiry: bool = False,
) -> dict:
    """The cardholder disputes the succeeded charge of a PaymentIntent (by default for all of
    it that was not refunded); the `charge.dispute.created` event. An inquiry starts as
    `warning_needs_response`, a chargeback as `needs_response`."""
    payload = {"payment_intent": payment_intent_id, "reason": reason, "inquiry": inquiry}
    if amount is not None:
        payload["amount"] = amount
    return _dispute_hook("/_config/disputes", payload)


def dispute_update(dispute_id: str, *, status: str = "under_review") -> dict:
    """The dispute moves on while open (evidence sent: `under_review`); the
    `charge.dispute.updated` event."""
    return _dispute_hook(f"/_config/disputes/{dispute_id}/update", {"status": status})


def dispute_close(dispute_id: str, *, status: str) -> dict:
    """The bank decides: `won` or `lost` (an inquiry: `warning_closed`); the
    `charge.dispute.closed` event."""
    return _dispute_hook(f"/_config/disputes/{dispute_id}/close", {"status": status})


def _dispute_hook(path: str, payload: dict) -> dict:
    status, body = standin_request(path, payload)
    if status != 200:
        raise RuntimeError(f"localstripe refused {path}: {status} {body}")
    return body


def refund_in_dashboard(payment_intent_id: str, amount: int | None = None) -> str:
    """Refund `amount` (None: what is left) of a PaymentIntent's charge as ops would in the
    Stripe dashboard: straight at localstripe, with none of the metadata (`credit_note`,
    `idempotency_key`) our own refunds carry. The refund's id; raises stripe's
    InvalidRequestError when localstripe refuses it (more than is left)."""
    params: dict = {"payment_intent": payment_intent_id}
    if amount is not None:
        params["amount"] = amount
    return standin_client().v1.refunds.create(params=params)["id"]


def standin_client() -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key=settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        max_network_retries=0,  # a retried POST repeats its side effects in localstripe
        http_client=stripe.RequestsClient(timeout=5),
    )


def standin_request(
    path: str, payload: dict | None = None, *, method: str = "POST"
) -> tuple[int, dict]:
    """A JSON request like Stripe.js's fetch(): (status, parsed body). Also the stand-in's own
    /_config/ endpoints, e.g. `standin_request("/_config/data", method="DELETE")` empties it."""
    request = urllib.request.Request(  # noqa: S310 (the http:// localstripe URL of the settings)
        settings.STRIPE_API_BASE.rstrip("/") + path,
        data=None if payload is None else json.dumps(payload).encode(),
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, _json(response.read())
    except urllib.error.HTTPError as e:
        return e.code, _json(e.read())


def _json(raw: bytes) -> dict:
    try:
        return json.loads(raw)
    except ValueError:
        return {}
