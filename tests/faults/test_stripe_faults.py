"""Stripe slow (timeouts) and down.

A fault-injecting HTTP proxy sits between our code and the shared localstripe; the tests
point settings.STRIPE_API_BASE at it (billing.gateway builds one client per API base and
timeout, so the override takes effect at the next call) with a 1-second timeout. The proxy
forwards every request whole and reads localstripe's whole answer before it delays it, so a
charge held past the timeout has really happened: exactly what a lost answer looks like to
us. "Down" closes the proxy's listening socket: connections are refused.

What must hold: an unanswered charge leaves its attempt pending (no decline, no dunning, no
"payment failed" email), the charge job retries it with the same idempotency key and Stripe
ends up with one PaymentIntent; invoices are issued whatever Stripe does; the customer's
pages answer within about one timeout with a clear message and change nothing; a webhook
replayed after recovery records nothing twice.
"""

import hashlib
import hmac
import http.client
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.urls import reverse

from accounts.models import OutgoingEmail
from billing.gateway import UNAVAILABLE_MESSAGE
from billing.models import (
    DunningCase,
    Invoice,
    InvoiceDocument,
    Payment,
    PaymentMethod,
    StripeEvent,
)
from devkit.stripe_standin import CHARGE_FAILS, MASTERCARD, confirmed_setup_intent
from subscriptions.models import Subscription
from tests.accounts.factories import OrganisationFactory
from tests.billing.helpers import add_card, subscribe

pytestmark = pytest.mark.django_db

TIMEOUT = 1  # settings.STRIPE_TIMEOUT_SECONDS in these tests
HOLD = 4  # how long the slow proxy holds an answer: well past the timeout
RENEWAL = datetime(2026, 2, 28, 10, 0, tzinfo=UTC)  # the first renewal of `subscribed`
# The jobs of a tick that issue, render and charge invoices and run dunning.
BILLING_JOBS = (
    "billing_run",
    "render_invoice_pdfs",
    "charge_open_invoices",
    "dunning_open_overdue",
    "dunning_steps",
)
PAYMENT_INTENTS = r"/v1/payment_intents(\?|$)"


# ------------------------------------------------------------------------------ the proxy --

# Headers of one hop, or that the proxy sets itself.
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    idempotency_key: str | None


class FaultProxy:
    """An HTTP proxy to localstripe that can hold answers (slow) or refuse connections (down).

    Every answer says `Connection: close`, so no pooled connection outlives `down()`.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.port = 0  # the first `up()` picks a free port and keeps it
        self.seen: list[Seen] = []
        self._holds: list[tuple[str, re.Pattern, float]] = []
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        if self._server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server

    def down(self) -> None:
        """Stop listening: every new connection is refused, as when Stripe is unreachable."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def slow(self, seconds: float = HOLD, *, method: str = "", path: str = "") -> None:
        """Hold for `seconds` the answers to requests of `method` (any if "") whose path and
        query match the regex `path`, after localstripe has answered them."""
        self._holds.append((method, re.compile(path), seconds))

    def fast(self) -> None:
        self._holds.clear()

    def hold_for(self, method: str, path: str) -> float:
        return max(
            (s for m, p, s in self._holds if m in ("", method) and p.search(path)), default=0
        )

    def posts(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and re.search(path, s.path)]

    def close(self) -> None:
        self._release.set()  # held answers go out now (to nobody)
        self.down()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._forward()

        do_POST = do_DELETE = do_GET

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            proxy.seen.append(Seen(self.command, self.path, self.headers.get("Idempotency-Key")))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
            finally:
                upstream.close()
            hold = proxy.hold_for(self.command, self.path)
            if hold:
                proxy._release.wait(hold)
            self.close_connection = True
            try:
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in _HOP_HEADERS:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up waiting: that is the point

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture
def subscribed(localstripe, org, admin):
    """`org` on Professional monthly since 31 Jan 2026, first invoice paid by Visa."""
    return subscribe(org)


@pytest.fixture
def stripe_proxy(localstripe, settings):
    """The proxy, up and transparent, as settings.STRIPE_API_BASE with a 1 s timeout.

    Requested after `localstripe`, whose client (for looking at what happened) talks to
    localstripe directly.
    """
    proxy = FaultProxy(settings.STRIPE_API_BASE)
    proxy.up()
    settings.STRIPE_API_BASE = proxy.url
    settings.STRIPE_TIMEOUT_SECONDS = TIMEOUT
    yield proxy
    proxy.close()


# ---------------------------------------------------------------------------- helpers --


def tick(at: datetime, *jobs: str) -> str:
    out = StringIO()
    options = [arg for job in jobs for arg in ("--job", job)]
    call_command("tick", "--now", at.isoformat(), *options, stdout=out, stderr=out)
    return out.getvalue()


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def intents_for(localstripe, invoice: Invoice) -> list:
    """localstripe's PaymentIntents for the invoice (asked directly, not through the proxy)."""
    return [
        intent
        for intent in localstripe.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
        if intent["metadata"].to_dict().get("invoice") == invoice.number
    ]


def emails(template: str) -> int:
    """How many messages of the template were queued (one message may have several rows)."""
    return OutgoingEmail.objects.filter(template=template).values("message_id").distinct().count()


def payments(invoice: Invoice) -> list[tuple]:
    return list(
        invoice.payments.order_by("attempt").values_list(
            "attempt", "status", "idempotency_key", "processor_id"
        )
    )


def replay_succeeded_event(client, localstripe, intent_id: str) -> list[dict]:
    """Deliver localstripe's payment_intent.succeeded event of the PaymentIntent to our
    endpoint twice, signed as Stripe signs it; our two answers."""
    [event] = [
        event
        for event in localstripe.v1.events.list(
            params={"type": "payment_intent.succeeded"}
        ).auto_paging_iter()
        if event["data"]["object"]["id"] == intent_id
    ]
    body = json.dumps(event.to_dict()).encode()
    answers = []
    for _ in range(2):
        timestamp = int(time.time())
        digest = hmac.new(
            settings.STRIPE_WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
        ).hexdigest()
        response = client.post(
            "/webhooks/stripe/",
            data=body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=f"t={timestamp},v1={digest}",
        )
        assert response.status_code == 200
        answers.append(response.json())
    return answers


def url(name: str, org) -> str:
    return reverse(f"billing:{name}", args=[org.slug])


def flashed(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def state(org) -> dict:
    """What a customer action must not change while Stripe is away."""
    return {
        "cards": list(
            PaymentMethod.objects.filter(organisation=org)
            .order_by("pk")
            .values_list("last4", "status")
        ),
        "invoices": list(
            Invoice.objects.filter(organisation=org).order_by("pk").values_list("number", "status")
        ),
        "subscription": list(
            Subscription.objects.filter(organisation=org).values_list("status", "plan__code")
        ),
        "failed_payments": Payment.objects.filter(organisation_id=org.pk, status="failed").count(),
        "dunning_cases": DunningCase.objects.filter(organisation=org).count(),
        "emails": OutgoingEmail.objects.filter(organisation=org).count(),
    }


# ------------------------------------------------------------------ slow: a lost answer --


def test_charge_answered_too_late_is_retried_with_its_key_and_charged_once(
    subscribed, org, stripe_proxy, localstripe, client
):
    stripe_proxy.slow(method="POST", path=PAYMENT_INTENTS)
    tick(RENEWAL, "billing_run", "render_invoice_pdfs")
    invoice = Invoice.objects.get(organisation=org, status="open")

    _, took = timed(tick, RENEWAL, "charge_open_invoices", "dunning_open_overdue", "dunning_steps")

    # The charge timed out after one timeout, not the proxy's hold...
    assert TIMEOUT <= took < TIMEOUT + 1
    # ...but localstripe charged the card: the outcome is unknown to us, and so recorded.
    [charged] = intents_for(localstripe, invoice)
    [(attempt, status, key, processor_id)] = payments(invoice)
    assert (attempt, status, processor_id) == (1, "pending", "")
    assert (charged["status"], charged["amount"], charged["metadata"]["idempotency_key"]) == (
        "succeeded",
        invoice.total,
        key,
    )
    invoice.refresh_from_db()
    assert (invoice.status, invoice.amount_paid) == ("open", 0)
    assert Subscription.objects.get(organisation=org).status == "active"
    assert DunningCase.objects.count() == 0
    assert emails("payment_failed") == 0

    # Stripe answers in time again. Within PENDING_RETRY_AFTER the attempt may still be in
    # flight somewhere: nothing is retried; after it, the same key is.
    stripe_proxy.fast()
    tick(RENEWAL + timedelta(minutes=1), *BILLING_JOBS)
    assert payments(invoice) == [(1, "pending", key, "")]
    tick(RENEWAL + timedelta(minutes=5), *BILLING_JOBS)

    invoice.refresh_from_db()
    assert (invoice.status, invoice.amount_paid) == ("paid", invoice.total)
    assert payments(invoice) == [(1, "succeeded", key, charged["id"])]
    assert [i["id"] for i in intents_for(localstripe, invoice)] == [charged["id"]]
    # One charge request ever reached Stripe, with the key of our attempt row.
    assert [s.idempotency_key for s in stripe_proxy.posts(PAYMENT_INTENTS)] == [key]
    assert (emails("payment_receipt"), emails("payment_failed")) == (2, 0)  # 1st + this one

    # Stripe's event about that charge, delivered (twice) after all this, changes nothing.
    answers = replay_succeeded_event(client, localstripe, charged["id"])
    assert answers == [
        {"status": "processed", "outcome": "ignored: already succeeded"},
        {"status": "duplicate"},
    ]
    assert payments(invoice) == [(1, "succeeded", key, charged["id"])]
    assert StripeEvent.objects.filter(type="payment_intent.succeeded").count() == 1
    assert emails("payment_receipt") == 2


# ------------------------------------------------------------- down: the billing run --


def test_billing_run_issues_while_stripe_is_down_and_charges_once_it_is_back(
    subscribed, org, stripe_proxy, localstripe, client
):
    stripe_proxy.down()

    with pytest.raises(CommandError) as failed:
        tick(RENEWAL)  # every job, as beat would run them

    # Only reconciliation, which must ask Stripe, failed.
    assert str(failed.value) == "1 job(s) failed: reconcile_stripe."
    invoice = Invoice.objects.get(organisation=org, status="open")
    assert (invoice.number, invoice.period_start) == ("INV-2026-000002", RENEWAL)
    assert InvoiceDocument.objects.filter(invoice=invoice, kind="original").count() == 1
    assert emails("invoice_issued") == 2  # the first invoice's and this one's
    [(attempt, status, key, processor_id)] = payments(invoice)
    assert (attempt, status, processor_id) == (1, "pending", "")
    assert intents_for(localstripe, invoice) == []
    assert Subscription.objects.get(organisation=org).status == "active"
    assert (DunningCase.objects.count(), emails("payment_failed")) == (0, 0)

    stripe_proxy.up()
    out = tick(RENEWAL + timedelta(minutes=5))

    assert "charge_open_invoices: 1 invoice(s) charged" in out
    invoice.refresh_from_db()
    assert (invoice.status, invoice.amount_paid) == ("paid", invoice.total)
    [charged] = intents_for(localstripe, invoice)
    assert payments(invoice) == [(1, "succeeded", key, charged["id"])]
    assert [s.idempotency_key for s in stripe_proxy.posts(PAYMENT_INTENTS)] == [key]
    # The next tick finds nothing to do.
    out = tick(RENEWAL + timedelta(minutes=20))
    assert "billing_run: 0 invoice(s) issued" in out
    assert "charge_open_invoices: 0 invoice(s) charged" in out

    answers = replay_succeeded_event(client, localstripe, charged["id"])
    assert answers == [
        {"status": "processed", "outcome": "ignored: already succeeded"},
        {"status": "duplicate"},
    ]
    assert payments(invoice) == [(1, "succeeded", key, charged["id"])]
    assert Payment.objects.filter(status="succeeded").count() == 2  # first invoice + this


def test_the_charge_job_stops_after_three_unanswered_charges(
    subscribed, org, stripe_proxy, localstripe
):
    for n in range(4):
        subscribe(OrganisationFactory(name=f"Customer {n}", slug=f"customer-{n}"))
    first_charges = len(stripe_proxy.posts(PAYMENT_INTENTS))
    stripe_proxy.down()

    out = tick(RENEWAL, "billing_run", "charge_open_invoices")

    # Five renewals issued; three charges left unanswered, then the job stopped waiting.
    assert "billing_run: 5 invoice(s) issued" in out
    assert "charge_open_invoices: 0 invoice(s) charged" in out
    assert Payment.objects.filter(status="pending").count() == 3
    assert Invoice.objects.filter(status="open", payments__isnull=True).count() == 2

    stripe_proxy.up()
    out = tick(RENEWAL + timedelta(minutes=5), "charge_open_invoices")

    assert "charge_open_invoices: 5 invoice(s) charged" in out
    assert not Invoice.objects.filter(status="open").exists()
    assert Payment.objects.filter(status="pending").count() == 0
    # One charge request per renewal invoice reached Stripe: the three retried with their keys.
    assert len(stripe_proxy.posts(PAYMENT_INTENTS)) - first_charges == 5


# ----------------------------------------------------------------- down: the pages --


@pytest.fixture
def past_due(subscribed, org, stripe_proxy, time_machine):
    """`org` past due since RENEWAL (its card failed), then a working Mastercard saved."""
    add_card(org, number=CHARGE_FAILS)
    tick(RENEWAL, *BILLING_JOBS)
    add_card(org, number=MASTERCARD)
    assert Subscription.objects.get(organisation=org).status == "past_due"
    time_machine.move_to(RENEWAL + timedelta(hours=1))
    return Invoice.objects.get(organisation=org, status="open")


def test_payment_method_page_while_stripe_is_down(past_due, org, admin, client_for, stripe_proxy):
    setup_intent_id = confirmed_setup_intent(
        customer_id=org.billing_profile.stripe_customer_id, number=MASTERCARD
    )
    before = state(org)
    client = client_for(admin)
    stripe_proxy.down()

    page, took = timed(client.get, url("payment_method", org))
    assert page.status_code == 200
    assert UNAVAILABLE_MESSAGE in page.content.decode()
    assert "Mastercard" in page.content.decode()  # the card on file is still shown
    assert took < TIMEOUT

    saved, took = timed(
        client.post, url("payment_method", org), {"setup_intent_id": setup_intent_id}
    )
    assert saved.status_code == 400
    assert UNAVAILABLE_MESSAGE in saved.content.decode()
    assert took < TIMEOUT

    retried, took = timed(client.post, url("retry_payment", org))
    assert retried.status_code == 302
    assert flashed(retried) == [UNAVAILABLE_MESSAGE]
    assert took < TIMEOUT
    assert state(org) == before
    # Retry Payment's attempt row was committed before Stripe was called; it stays pending
    # (never failed: the card was not declined) for the charge job to retry with its key.
    assert [p[:2] for p in payments(past_due)] == [(1, "failed"), (2, "pending")]

    # Back up: the charge job pays the invoice with that attempt.
    stripe_proxy.up()
    tick(RENEWAL + timedelta(hours=2), *BILLING_JOBS)
    past_due.refresh_from_db()
    assert past_due.status == "paid"
    assert [p[:2] for p in payments(past_due)] == [(1, "failed"), (2, "succeeded")]
    assert Subscription.objects.get(organisation=org).status == "active"


def test_checkout_while_stripe_is_down(org, admin, client_for, stripe_proxy):
    choice = {"plan": "professional", "billing_cycle": "monthly", "currency": "USD"}
    client = client_for(admin)
    stripe_proxy.down()

    page = client.get(url("checkout", org), choice)
    assert page.status_code == 200
    assert UNAVAILABLE_MESSAGE in page.content.decode()

    paid = client.post(url("checkout", org), {**choice, "setup_intent_id": "seti_123"})
    assert paid.status_code == 402
    assert UNAVAILABLE_MESSAGE in paid.content.decode()
    assert (Subscription.objects.count(), Invoice.objects.count()) == (0, 0)
    assert PaymentMethod.objects.count() == 0


# ------------------------------------------------------------------ slow: the pages --


def test_pages_answer_within_one_timeout_when_stripe_is_slow(
    past_due, org, admin, client_for, stripe_proxy, localstripe, time_machine
):
    # A second open invoice: Retry Payment must not wait one timeout per invoice.
    next_renewal = datetime(2026, 3, 31, 10, 0, tzinfo=UTC)
    tick(next_renewal, "billing_run")
    time_machine.move_to(next_renewal + timedelta(hours=1))
    second = Invoice.objects.get(organisation=org, status="open", period_start=next_renewal)
    setup_intent_id = confirmed_setup_intent(
        customer_id=org.billing_profile.stripe_customer_id, number=MASTERCARD
    )
    before = state(org)
    client = client_for(admin)
    stripe_proxy.slow()  # every answer

    page, took_page = timed(client.get, url("payment_method", org))
    assert page.status_code == 200
    assert UNAVAILABLE_MESSAGE in page.content.decode()

    saved, took_save = timed(
        client.post, url("payment_method", org), {"setup_intent_id": setup_intent_id}
    )
    assert saved.status_code == 400
    assert UNAVAILABLE_MESSAGE in saved.content.decode()

    retried, took_retry = timed(client.post, url("retry_payment", org))
    assert retried.status_code == 302
    assert flashed(retried) == [UNAVAILABLE_MESSAGE]

    for took in (took_page, took_save, took_retry):
        assert TIMEOUT <= took < 2 * TIMEOUT  # one timeout, never two
    assert state(org) == before
    assert [p[:2] for p in payments(past_due)] == [(1, "failed"), (2, "pending")]
    assert payments(second) == []  # not tried after the first charge went unanswered

    # Stripe answers again: the charge job pays both, each once.
    stripe_proxy.fast()
    tick(next_renewal + timedelta(hours=2), *BILLING_JOBS)
    for invoice in (past_due, second):
        invoice.refresh_from_db()
        assert invoice.status == "paid"
        assert [i["status"] for i in intents_for(localstripe, invoice)][-1] == "succeeded"
    assert [p[:2] for p in payments(past_due)] == [(1, "failed"), (2, "succeeded")]
    assert [p[:2] for p in payments(second)] == [(1, "succeeded")]
    assert Subscription.objects.get(organisation=org).status == "active"


def test_checkout_when_stripe_is_slow_charges_once(
    org, admin, client_for, stripe_proxy, localstripe, time_machine
):
    add_card(org)
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    time_machine.move_to(start)
    choice = {"plan": "professional", "billing_cycle": "monthly", "currency": "USD"}
    client = client_for(admin)
    stripe_proxy.slow(method="POST", path=PAYMENT_INTENTS)

    paid, took = timed(client.post, url("checkout", org), choice)  # "Pay with this card"

    assert paid.status_code == 402
    assert "We have not heard back from the card processor yet." in paid.content.decode()
    assert TIMEOUT <= took < 2 * TIMEOUT  # one timeout, never two
    invoice = Invoice.objects.get(organisation=org)
    [charged] = intents_for(localstripe, invoice)  # Stripe did charge
    [(attempt, status, key, _)] = payments(invoice)
    assert (attempt, status, charged["metadata"]["idempotency_key"]) == (1, "pending", key)
    assert Subscription.objects.get(organisation=org).status == "incomplete"

    # A second click at once finds the charge in flight and sends nothing to Stripe.
    again = client.post(url("checkout", org), choice)
    assert again.status_code == 402
    assert len(stripe_proxy.posts(PAYMENT_INTENTS)) == 1

    # Minutes later, Stripe answering again, the click settles the same charge.
    stripe_proxy.fast()
    time_machine.move_to(start + timedelta(minutes=3))
    done = client.post(url("checkout", org), choice)

    assert done.status_code == 302
    invoice.refresh_from_db()
    assert (invoice.status, Invoice.objects.count()) == ("paid", 1)
    assert payments(invoice) == [(1, "succeeded", key, charged["id"])]
    assert [i["id"] for i in intents_for(localstripe, invoice)] == [charged["id"]]
    assert len(stripe_proxy.posts(PAYMENT_INTENTS)) == 1
    assert Subscription.objects.get(organisation=org).status == "active"


def test_a_checkout_charge_left_unanswered_is_settled_by_the_charge_job(
    org, admin, client_for, stripe_proxy, localstripe, time_machine
):
    add_card(org)
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    time_machine.move_to(start)
    choice = {"plan": "professional", "billing_cycle": "monthly", "currency": "USD"}
    stripe_proxy.slow(method="POST", path=PAYMENT_INTENTS)
    assert client_for(admin).post(url("checkout", org), choice).status_code == 402
    invoice = Invoice.objects.get(organisation=org)
    [(_, status, key, _)] = payments(invoice)
    assert status == "pending"
    stripe_proxy.fast()

    # The customer never comes back: the job learns the outcome, with the same key.
    assert "charge_open_invoices: 0 invoice(s) charged" in tick(start, "charge_open_invoices")
    out = tick(start + timedelta(minutes=5), "charge_open_invoices")

    assert "charge_open_invoices: 1 invoice(s) charged" in out
    invoice.refresh_from_db()
    [charged] = intents_for(localstripe, invoice)
    assert invoice.status == "paid"
    assert payments(invoice) == [(1, "succeeded", key, charged["id"])]
    assert Subscription.objects.get(organisation=org).status == "active"
    assert emails("payment_receipt") == 1
