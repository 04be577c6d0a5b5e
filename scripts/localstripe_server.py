"""Run localstripe, the Stripe stand-in for development and tests, on 127.0.0.1.

    .venv/bin/python scripts/localstripe_server.py     # port: $STRIPE_PORT (default 58420)

scripts/services.sh starts it. The API is at http://127.0.0.1:$STRIPE_PORT/v1/..., the
Stripe.js mock at /js.stripe.com/v3/, and the test hooks at /_config/... as upstream
(`DELETE /_config/data` empties the store; `POST /_config/webhooks/<id>` registers a
webhook with `url` and `secret`) and our own (disputes, below).

What differs from `python -m localstripe`, each change making it safer on a shared machine
or closer to the real Stripe our code is written against:

- It listens on 127.0.0.1 only (upstream's --port listens on all interfaces).
- The store lives in memory only. Upstream pickles it to /tmp/localstripe.pickle after
  every write and loads it at start: slow, and shared by every checkout on the machine.
- POSTs honour `Idempotency-Key` as Stripe does (upstream ignores the header): a repeated
  key replays the first response (header `Idempotent-Replayed: true`); the same key with
  other parameters is a 400 `idempotency_error`; a key still in use is a 409.
- Declines are `card_error`s with a `decline_code`, as on Stripe (upstream says
  `invalid_request_error` and gives no decline code).
- Card brands come from the number (upstream says "visa" for every card) and 15-digit
  American Express numbers with a 4-digit CVC are accepted (upstream requires 16 digits).
- A SetupIntent confirmed with a card for a customer attaches the card to that customer,
  as Stripe does (upstream leaves PaymentMethod.customer empty).
- PaymentIntents accept `description` and can be listed with `customer=`, as on Stripe.
- A card whose expiry month has passed is refused with `invalid_expiry_year` or
  `invalid_expiry_month`, as Stripe refuses it (upstream accepts any year up to 2100). A card
  is good until the end of its expiry month.
- 3-D Secure as on Stripe (upstream leaves every confirm of such a card waiting for the
  browser, even off-session):
  - An off-session confirm of a card that needs authentication is refused with a 402
    `card_error`, code and decline code `authentication_required`, the PaymentIntent in the
    error; it then waits for a payment method, the card in `last_payment_error`.
  - Except 4000002500003155 once a SetupIntent (usage off_session) saved it: that card asks
    only on session, so its off-session charges go through.
  - `POST /v1/payment_intents/{id}/confirm` accepts `payment_method` (and `off_session`,
    `use_stripe_sdk`, `return_url`), so a PaymentIntent whose authentication failed can be
    confirmed again on session: it asks for authentication again, it does not charge twice.
- A PaymentIntent created with an amount under the currency's minimum charge (the table in
  core/money.py, Stripe's "Minimum and maximum charge amounts") is refused with Stripe's 400
  `invalid_request_error`, code `amount_too_small`, param `amount` (upstream accepts any
  positive amount).
- Disputes (upstream has none): `GET /v1/disputes/{id}`, `GET /v1/disputes` (`charge=`,
  `payment_intent=`) and `POST /v1/disputes/{id}/close` (the merchant accepts: lost, or an
  inquiry closed), as on Stripe. The cardholder's and the bank's side, which Stripe's test
  mode plays with magic card numbers, are test hooks, each answering the Event it made and
  delivering it to the registered webhooks:
  - `POST /_config/disputes` with `payment_intent` (or `charge`), optional `amount` (default:
    what was not refunded), `reason` (default `fraudulent`) and `inquiry` (true: status
    `warning_needs_response`, else `needs_response`): `charge.dispute.created`. The charge
    stays `succeeded` (and `disputed`), as on Stripe; one dispute per charge.
  - `POST /_config/disputes/{id}/update` with `status` (default `under_review`; an inquiry
    `warning_under_review`, or `needs_response` when it turns into a chargeback):
    `charge.dispute.updated`.
  - `POST /_config/disputes/{id}/close` with `status` `won` or `lost` (an inquiry:
    `warning_closed`): `charge.dispute.closed`. A closed dispute never moves again (400).
- Refunds as on Stripe (upstream refunds any amount, any number of times):
  - A refund larger than what is left unrefunded on the charge is refused with a 400
    `invalid_request_error`, param `amount`, "Refund amount ($X) is greater than unrefunded
    amount on charge ($Y)"; once nothing is left, with code `charge_already_refunded`. A
    refund without an amount refunds what is left (upstream: the whole charge again).
  - A refund names its PaymentIntent also when it was made with `charge=`.
  - Each refund made through the API delivers a `charge.refunded` event to the registered
    webhooks: the Charge with `payment_intent`, `amount`, `amount_refunded`, `refunded`,
    `currency` and its `refunds` (id, amount, metadata, status, created of each).
"""

import hashlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from localstripe import resources, server

# The minimum charge table is the project's own (core/money.py: no imports, no Django).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.money import MINIMUM_CHARGE, format_money, minimum_charge_message  # noqa: E402

log = logging.getLogger("localstripe_server")

# ------------------------------------------------------------ memory-only store --

resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None

# --------------------------------------------------------------- idempotency keys --

_IN_PROGRESS = object()
# (Authorization header, key) -> (request fingerprint, saved response or _IN_PROGRESS)
_idempotent_results: dict[tuple[str, str], tuple[str, object]] = {}


def _idempotency_error(status: int, message: str) -> web.Response:
    return server.json_response(
        {"error": {"type": "idempotency_error", "message": message}}, status=status
    )


@web.middleware
async def idempotency_middleware(request: web.Request, handler):
    if request.method == "DELETE" and request.path == "/_config/data":
        _idempotent_results.clear()
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key:
        return await handler(request)

    scope = (request.headers.get("Authorization", ""), key)
    body = await request.read()  # aiohttp keeps it, so the handler can read it again
    fingerprint = hashlib.sha256(request.path.encode() + b"\0" + body).hexdigest()
    if scope in _idempotent_results:
        first_fingerprint, saved = _idempotent_results[scope]
        if first_fingerprint != fingerprint:
            return _idempotency_error(
                400,
                "Keys for idempotent requests can only be used with the same parameters "
                f"they were first used with. Try using a key other than '{key}' if you "
                "meant to execute a different request.",
            )
        if saved is _IN_PROGRESS:
            return _idempotency_error(
                409,
                "There is currently another in-progress request using this idempotent "
                "key. Please try again later.",
            )
        status, text = saved
        response = server.json_response(status=status, text=text)
        response.headers["Idempotent-Replayed"] = "true"
        return response

    _idempotent_results[scope] = (fingerprint, _IN_PROGRESS)
    try:
        response = await handler(request)
    except BaseException:
        del _idempotent_results[scope]
        raise
    # Like Stripe, keep results of requests that ran (success, or a card declined while
    # running) but not of requests rejected up front (bad parameters, auth), which may
    # be retried with the same key once fixed.
    if response.status < 400 or response.status == 402:
        _idempotent_results[scope] = (fingerprint, (response.status, response.text))
    else:
        del _idempotent_results[scope]
    return response


@web.middleware
async def card_error_middleware(request: web.Request, handler):
    # Upstream answers declines with type invalid_request_error and no decline_code;
    # Stripe says card_error, and generic_decline for its generic test cards.
    response = await handler(request)
    if response.status == 402:
        body = json.loads(response.text)
        error = body.get("error") or {}
        error["type"] = "card_error"
        if error.get("code") == "card_declined":
            error.setdefault("decline_code", "generic_decline")
        response = server.json_response(body, status=402)
    return response


# The first one is the outermost, so a replayed decline is the rewritten one.
server.app.middlewares.insert(0, card_error_middleware)
server.app.middlewares.insert(0, idempotency_middleware)

# ------------------------------------------------------------------- card brands --


def card_brand(number: str) -> str:
    """Brand of a card number, spelled as Stripe's PaymentMethod.card.brand."""
    if number.startswith("4"):
        return "visa"
    if number[:2] in ("34", "37"):
        return "amex"
    if "51" <= number[:2] <= "55" or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number.startswith(("6011", "65")) or "644" <= number[:3] <= "649":
        return "discover"
    if number.startswith("35"):
        return "jcb"
    if number.startswith(("36", "38", "39")) or "300" <= number[:3] <= "305":
        return "diners"
    if number.startswith("62"):
        return "unionpay"
    return "unknown"


_payment_method_init = resources.PaymentMethod.__init__


def _refuse_expired(card: dict) -> None:
    try:
        month, year = int(card.get("exp_month")), int(card.get("exp_year"))
    except (TypeError, ValueError):
        return  # upstream's own validation answers that
    year += 2000 if 0 < year < 100 else 0
    today = datetime.now(UTC)
    if year < today.year:
        raise resources.UserError(
            402,
            "Your card's expiration year is invalid.",
            {"code": "invalid_expiry_year", "param": "exp_year"},
        )
    if year == today.year and month < today.month:
        raise resources.UserError(
            402,
            "Your card's expiration month is invalid.",
            {"code": "invalid_expiry_month", "param": "exp_month"},
        )


def _payment_method_init_with_brand(self, **data):
    card = data.get("card")
    number = card.get("number") if isinstance(card, dict) else None
    if data.get("type") == "card" and isinstance(card, dict):
        _refuse_expired(card)
    if data.get("type") == "card" and isinstance(number, str) and number.isdigit():
        if len(number) == 15:
            # Upstream validates 16 digits and a 3-digit CVC; give it a stand-in to
            # validate and put the real number back below.
            data["card"] = {**card, "number": number + "0", "cvc": str(card.get("cvc") or "")[:3]}
        _payment_method_init(self, **data)
        self._card_number = number
        self.card["last4"] = number[-4:]
        self.card["fingerprint"] = resources.fingerprint(number)
        self.card["brand"] = card_brand(number)
    else:
        _payment_method_init(self, **data)


resources.PaymentMethod.__init__ = _payment_method_init_with_brand

# ----------------------------------------------------- Stripe behaviour we rely on --

_setup_intent_attach_pm = resources.SetupIntent._attach_pm


def _setup_intent_attach_pm_to_customer(self, pm):
    _setup_intent_attach_pm(self, pm)  # raises on a declined card
    # Stripe attaches it once the SetupIntent succeeds; this also does on
    # requires_action (3-D Secure), which upstream completes without calling us again.
    if self.customer:
        pm.customer = self.customer


resources.SetupIntent._attach_pm = _setup_intent_attach_pm_to_customer

_payment_intent_init = resources.PaymentIntent.__init__


def _payment_intent_init_with_description(self, description=None, **data):
    if description is not None and not isinstance(description, str):
        raise resources.UserError(400, "Bad request")
    _payment_intent_init(self, **data)
    self.description = description


resources.PaymentIntent.__init__ = _payment_intent_init_with_description

_payment_intent_init_checked = resources.PaymentIntent.__init__


def _payment_intent_init_refusing_small_amounts(self, amount=None, currency=None, **data):
    minimum = MINIMUM_CHARGE.get(str(currency or "").upper())
    value = resources.try_convert_to_int(amount)  # form-encoded: a string
    if minimum is not None and isinstance(value, int) and 0 < value < minimum:
        raise resources.UserError(
            400,
            minimum_charge_message(currency),
            {"code": "amount_too_small", "param": "amount"},
        )
    _payment_intent_init_checked(self, amount=amount, currency=currency, **data)


resources.PaymentIntent.__init__ = _payment_intent_init_refusing_small_amounts

_payment_intent_list_all = resources.PaymentIntent._api_list_all.__func__


def _payment_intent_list_all_by_customer(cls, url, customer=None, **data):
    listing = _payment_intent_list_all(cls, url, **data)
    if customer is not None:
        listing._list = [pi for pi in listing._list if pi.customer == customer]
    return listing


resources.PaymentIntent._api_list_all = classmethod(_payment_intent_list_all_by_customer)


# ---------------------------------------------------------------------- refunds --


def _charge_refunded(charge, payment_intent):
    """The succeeded Charge a refund request names, or None to let upstream's own
    validation answer (bad ids, unknown objects, failed payments)."""
    try:
        if payment_intent is None and isinstance(charge, str) and charge.startswith("ch_"):
            found = resources.Charge._api_retrieve(charge)
        elif charge is None and str(payment_intent).startswith("pi_"):
            found = resources.PaymentIntent._api_retrieve(payment_intent).latest_charge
        else:
            return None
    except resources.UserError:
        return None
    return found if found is not None and found.status == "succeeded" else None


_refund_init = resources.Refund.__init__


def _refund_init_within_charge(self, charge=None, payment_intent=None, amount=None, **data):
    refunded = _charge_refunded(charge, payment_intent)
    if refunded is not None:
        left = refunded.amount - refunded.amount_refunded
        value = resources.try_convert_to_int(amount)  # form-encoded: a string
        if left <= 0:
            raise resources.UserError(
                400,
                f"Charge {refunded.id} has already been refunded.",
                {"code": "charge_already_refunded", "charge": refunded.id},
            )
        if isinstance(value, int) and value > left:
            raise resources.UserError(
                400,
                f"Refund amount ({format_money(value, refunded.currency)}) is greater than "
                f"unrefunded amount on charge ({format_money(left, refunded.currency)})",
                {"param": "amount"},
            )
        if amount is None:
            amount = left
    _refund_init(self, charge=charge, payment_intent=payment_intent, amount=amount, **data)
    if self.payment_intent is None and refunded is not None:
        self.payment_intent = refunded.payment_intent


resources.Refund.__init__ = _refund_init_within_charge

_refund_create = resources.Refund._api_create.__func__


def _refund_create_announced(cls, **data):
    refund = _refund_create(cls, **data)
    charge = resources.Charge._api_retrieve(refund.charge)
    resources.schedule_webhook(resources.Event("charge.refunded", charge))
    return refund


resources.Refund._api_create = classmethod(_refund_create_announced)


# ----------------------------------------------------------------- 3-D Secure --

# Asks for authentication on session only, once saved for off-session use (Stripe's
# "authentication required on setup" card); the others ask on every payment.
_EXEMPT_OFF_SESSION_ONCE_SET_UP = frozenset({"4000002500003155"})
_AUTHENTICATION_REQUIRED = {
    "code": "authentication_required",
    "decline_code": "authentication_required",
    "message": "Your card was declined. This transaction requires authentication.",
}

_payment_intent_confirm = resources.PaymentIntent._confirm
_last_payment_error = resources.PaymentIntent.last_payment_error.fget


def _payment_intent_confirm_as_stripe(self, on_failure_now):
    self._authentication_required = None
    method = resources.PaymentMethod._api_retrieve(self.payment_method)
    if getattr(self, "_off_session", False) and method._requires_authentication():
        exempt = getattr(method, "_off_session_mandate", False) and (
            getattr(method, "_card_number", "") in _EXEMPT_OFF_SESSION_ONCE_SET_UP
        )
        if exempt:
            self._authentication_failed = False
            self._create_charge(on_failure_now=on_failure_now)
            return
        self._authentication_failed = False
        self._authentication_required = {**_AUTHENTICATION_REQUIRED, "payment_method": method.id}
        self.payment_method = None
        self.next_action = None
        resources.schedule_webhook(resources.Event("payment_intent.payment_failed", self))
        raise resources.UserError(
            402,
            _AUTHENTICATION_REQUIRED["message"],
            {
                "code": "authentication_required",
                "decline_code": "authentication_required",
                "payment_intent": self._export(),
            },
        )
    _payment_intent_confirm(self, on_failure_now)


def _payment_intent_last_error(self):
    return getattr(self, "_authentication_required", None) or _last_payment_error(self)


def _payment_intent_create_as_stripe(cls, confirm=None, off_session=None, **data):
    confirm = resources.try_convert_to_bool(confirm)
    off_session = resources.try_convert_to_bool(off_session)
    if confirm not in (None, True, False) or off_session not in (None, True, False):
        raise resources.UserError(400, "Bad request")
    if off_session is not None and confirm is not True:
        raise resources.UserError(400, "Bad request")
    obj = cls(**data)
    obj._off_session = bool(off_session)
    if confirm:
        obj._confirm(on_failure_now=obj._report_failure)
    return obj


def _payment_intent_confirm_again(
    cls,
    id,
    payment_method=None,
    off_session=None,
    use_stripe_sdk=None,
    return_url=None,
    client_secret=None,
    **kwargs,
):
    if kwargs:
        raise resources.UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
    if not (isinstance(id, str) and id.startswith("pi_")):
        raise resources.UserError(400, "Bad request")
    obj = cls._api_retrieve(id)
    if client_secret is not None and client_secret != obj.client_secret:
        raise resources.UserError(401, "Unauthorized")
    if obj.status not in ("requires_payment_method", "requires_confirmation", "requires_action"):
        raise resources.UserError(400, "Bad request")
    if payment_method is not None:
        resources.PaymentMethod._api_retrieve(payment_method)  # 404 when unknown
        obj.payment_method = payment_method
        obj.latest_charge = None
    if obj.payment_method is None:
        raise resources.UserError(400, "Bad request")
    obj.next_action = None
    obj._authentication_failed = False
    obj._off_session = bool(resources.try_convert_to_bool(off_session))
    obj._confirm(on_failure_now=obj._report_failure)
    return obj


_setup_intent_confirm = resources.SetupIntent._api_confirm.__func__


def _setup_intent_confirm_with_mandate(cls, id, **data):
    obj = _setup_intent_confirm(cls, id, **data)
    # Saved for later off-session payments: the bank's exemption for cards that allow it.
    if obj.status == "succeeded" and obj.usage == "off_session" and obj.payment_method:
        resources.PaymentMethod._api_retrieve(obj.payment_method)._off_session_mandate = True
    return obj


resources.PaymentIntent._confirm = _payment_intent_confirm_as_stripe
resources.PaymentIntent.last_payment_error = property(_payment_intent_last_error)
resources.PaymentIntent._api_create = classmethod(_payment_intent_create_as_stripe)
resources.PaymentIntent._api_confirm = classmethod(_payment_intent_confirm_again)
resources.SetupIntent._api_confirm = classmethod(_setup_intent_confirm_with_mandate)

# Upstream bound its confirm routes to the functions replaced above when it was imported.
_CONFIRM_ROUTES = {
    "/v1/payment_intents/{id}/confirm": resources.PaymentIntent._api_confirm,
    "/v1/setup_intents/{id}/confirm": resources.SetupIntent._api_confirm,
}


@web.middleware
async def confirm_as_stripe_middleware(request: web.Request, handler):
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else ""
    if request.method == "POST" and path in _CONFIRM_ROUTES:
        return await server.api_extra(_CONFIRM_ROUTES[path], path)(request)
    return await handler(request)


# Innermost: upstream's error middleware turns a UserError raised here into its answer.
server.app.middlewares.append(confirm_as_stripe_middleware)

# ------------------------------------------------------------------- disputes --

# Stripe's dispute reasons (Dispute.reason).
DISPUTE_REASONS = frozenset(
    {
        "bank_cannot_process",
        "check_returned",
        "credit_not_processed",
        "customer_initiated",
        "debit_not_authorized",
        "duplicate",
        "fraudulent",
        "general",
        "incorrect_account_details",
        "insufficient_funds",
        "product_not_received",
        "product_unacceptable",
        "subscription_canceled",
        "unrecognized",
    }
)
# The statuses a dispute moves through, inquiries (warning_*) and chargebacks, and the ones
# that end it.
_DISPUTE_OPEN = {
    "inquiry": ("warning_needs_response", "warning_under_review", "needs_response"),
    "chargeback": ("needs_response", "under_review"),
}
_DISPUTE_CLOSED = {"inquiry": ("warning_closed",), "chargeback": ("won", "lost")}


class Dispute(resources.StripeObject):
    """A cardholder's dispute of a succeeded charge, with the fields Stripe's Dispute has
    that a webhook consumer reads."""

    object = "dispute"
    _id_prefix = "dp_"

    def __init__(self, charge, amount: int, reason: str, inquiry: bool):
        super().__init__()
        self.amount = amount
        self.currency = charge.currency
        self.charge = charge.id
        self.payment_intent = charge.payment_intent
        self.reason = reason
        self.status = "warning_needs_response" if inquiry else "needs_response"
        self.is_charge_refundable = inquiry
        self.metadata = {}
        self.evidence = {}
        self.evidence_details = {
            "due_by": self.created + 7 * 86400,
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        }
        self.balance_transactions = []
        self._kind = "inquiry" if inquiry else "chargeback"

    @classmethod
    def _api_list_all(cls, url, charge=None, payment_intent=None, **data):
        listing = super()._api_list_all(url, **data)
        listing._list = [
            d
            for d in listing._list
            if charge in (None, d.charge) and payment_intent in (None, d.payment_intent)
        ]
        return listing

    @classmethod
    def _api_close(cls, id, **data):
        """POST /v1/disputes/{id}/close: the merchant accepts the dispute (lost; an inquiry
        closes)."""
        if data:
            raise resources.UserError(400, "Unexpected " + ", ".join(data))
        dispute = cls._api_retrieve(id)
        dispute._move(_DISPUTE_CLOSED[dispute._kind][-1], "charge.dispute.closed")
        return dispute

    def _move(self, status: str, event_type: str) -> resources.Event:
        if self.status in _DISPUTE_CLOSED[self._kind]:
            raise resources.UserError(400, f"This dispute is already closed ({self.status}).")
        self.status = status
        if status == "needs_response":
            self._kind = "chargeback"  # an inquiry escalated
        return _dispute_event(event_type, self)


def _dispute_event(event_type: str, dispute: Dispute) -> resources.Event:
    event = resources.Event(event_type, dispute)
    resources.schedule_webhook(event)
    return event


def _disputed_charge(data: dict):
    """The succeeded charge `payment_intent` or `charge` names, not disputed yet."""
    payment_intent, charge_id = data.get("payment_intent"), data.get("charge")
    if isinstance(payment_intent, str) and payment_intent.startswith("pi_"):
        charge = resources.PaymentIntent._api_retrieve(payment_intent).latest_charge
    elif isinstance(charge_id, str) and charge_id.startswith("ch_"):
        charge = resources.Charge._api_retrieve(charge_id)
    else:
        raise resources.UserError(400, "Name the disputed payment_intent or charge.")
    if charge is None or charge.status != "succeeded":
        raise resources.UserError(400, "Only a succeeded charge can be disputed.")
    if any(d.charge == charge.id for d in Dispute._api_list_all("/v1/disputes")._list):
        raise resources.UserError(400, f"Charge {charge.id} is already disputed.")
    return charge


async def config_dispute_create(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    charge = _disputed_charge(data)
    amount = resources.try_convert_to_int(
        data.get("amount", charge.amount - charge.amount_refunded)
    )
    reason = data.get("reason", "fraudulent")
    inquiry = resources.try_convert_to_bool(data.get("inquiry", False))
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise resources.UserError(400, "amount must be a whole number of minor units.")
    if not 0 < amount <= charge.amount - charge.amount_refunded:
        raise resources.UserError(400, "amount must be positive and at most what was not refunded.")
    if reason not in DISPUTE_REASONS or inquiry not in (True, False):
        raise resources.UserError(400, "Bad request")
    dispute = Dispute(charge, amount, reason, inquiry)
    charge.disputed = True
    return server.json_response(_dispute_event("charge.dispute.created", dispute)._export())


async def config_dispute_update(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    dispute = Dispute._api_retrieve(request.match_info["id"])
    status = data.get("status", "under_review")
    if status not in _DISPUTE_OPEN[dispute._kind]:
        raise resources.UserError(400, f"A {dispute._kind} cannot move to {status!r}.")
    return server.json_response(dispute._move(status, "charge.dispute.updated")._export())


async def config_dispute_close(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    dispute = Dispute._api_retrieve(request.match_info["id"])
    status = data.get("status")
    if status not in _DISPUTE_CLOSED[dispute._kind]:
        raise resources.UserError(400, f"A {dispute._kind} cannot close as {status!r}.")
    return server.json_response(dispute._move(status, "charge.dispute.closed")._export())


server.app.router.add_post("/_config/disputes", config_dispute_create)
server.app.router.add_post("/_config/disputes/{id}/update", config_dispute_update)
server.app.router.add_post("/_config/disputes/{id}/close", config_dispute_close)
server.app.router.add_post(
    "/v1/disputes/{id}/close", server.api_extra(Dispute._api_close, "/v1/disputes/{id}/close")
)
server.app.router.add_get("/v1/disputes/{id}", server.api_retrieve(Dispute, "/v1/disputes/{id}"))
server.app.router.add_get("/v1/disputes", server.api_list_all(Dispute, "/v1/disputes"))


def main() -> None:
    port = int(os.environ.get("STRIPE_PORT") or 58420)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info("localstripe (memory-only store) on http://127.0.0.1:%d", port)
    web.run_app(
        server.app,
        host="127.0.0.1",
        port=port,
        access_log=logging.getLogger("aiohttp.access"),
        print=None,
    )


if __name__ == "__main__":
    main()
