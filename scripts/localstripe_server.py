"""Run localstripe, the Stripe stand-in for development and tests, on 127.0.0.1.

    .venv/bin/python scripts/localstripe_server.py     # port: $STRIPE_PORT (default 58420)

scripts/services.sh starts it. The API is at http://127.0.0.1:$STRIPE_PORT/v1/..., the
Stripe.js mock at /js.stripe.com/v3/, and the test hooks at /_config/... as upstream
(`DELETE /_config/data` empties the store; `POST /_config/webhooks/<id>` registers a
webhook with `url` and `secret`).

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
- A PaymentIntent created with an amount under the currency's minimum charge (the table in
  core/money.py, Stripe's "Minimum and maximum charge amounts") is refused with Stripe's 400
  `invalid_request_error`, code `amount_too_small`, param `amount` (upstream accepts any
  positive amount).
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
from core.money import MINIMUM_CHARGE, minimum_charge_message  # noqa: E402

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
