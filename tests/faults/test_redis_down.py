"""Fault: Redis stops (or hangs) while the portal serves pages and the machine API.

Pages keep working, jobs catch up after the restart. Redis is the cache
(allauth's and our rate-limit counters; core.ratelimit.FailOpenRedisCache) and the
Celery broker (emails and PDFs are queued after commit; the deliver_pending_emails and
render_invoice_pdfs jobs send what could not be queued). Sessions are in Postgres.

Each test starts a PRIVATE redis-server (tests/faults/private_services.py), points the cache
and this process's Celery app at it (publishing for real, not eagerly), then stops or pauses
it. The shared Redis is never touched. Slow: about 20 s for the module, most of it the
hung-Redis test waiting out socket timeouts.
"""

import base64
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis as redis_lib
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import (
    TOTP,
    format_hotp_value,
    generate_totp_secret,
    hotp_value,
)
from django.core import mail
from django.core.cache import caches
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import Invitation, Membership, OutgoingEmail
from accounts.tasks import deliver_email
from billing.models import InvoiceDocument
from core import queueing
from core.jobs import run_job
from subscriptions.models import Plan
from tests.accounts.factories import PASSWORD, MembershipFactory, UserFactory
from tests.billing.factories import issued_invoice
from tests.faults.private_services import (
    celery_broker,
    private_redis,
    redis_server_binary,
)
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.services import api_key_create

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(redis_server_binary() is None, reason="redis-server is not installed"),
]

# A page may take this long with Redis gone; a dead broker must fail fast, not hang the page.
PAGE_BUDGET = 1.5  # seconds
PDF_BUDGET = 5.0  # the first render imports WeasyPrint


@pytest.fixture
def redis_server():
    """A private Redis serving as this test's cache and Celery broker (real publishing)."""
    from django.conf import settings

    with private_redis() as server:
        cache = {**settings.CACHES["default"], "LOCATION": server.url, "KEY_PREFIX": "faults"}
        # celery_broker first: it saves the app's own settings, which must not be the overrides.
        with (
            celery_broker(server.url),
            override_settings(
                CACHES={"default": cache},
                CELERY_BROKER_URL=server.url,
                CELERY_TASK_ALWAYS_EAGER=False,
            ),
        ):
            yield server


@pytest.fixture
def portal(org):
    """Acme with a password-signed-in Admin, a plan, an invoice and an API key."""
    admin = MembershipFactory(
        organisation=org,
        role=Membership.Role.ADMIN,
        user=UserFactory(email="admin@acme.test"),
    ).user
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    invoice = issued_invoice(organisation=org, status="paid")
    environment = EnvironmentFactory(organisation=org, name="Production")
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    _key, plain = api_key_create(
        environment=environment, actor=Actor(user=admin), name="runtime", now=timezone.now()
    )
    return {"admin": admin, "invoice": invoice, "flow": flow, "api_key": plain}


def _timed(committed, call):
    """One request as in production: on_commit work (queueing to the broker) runs too."""
    started = time.monotonic()
    with committed():
        response = call()
    return response, time.monotonic() - started


def _journey(client, committed, org, portal, *, invitee: str, batch: str) -> dict:
    """Sign in, browse, download a PDF, invite someone, ingest a batch: {step: (status, s)}."""
    slug = org.slug
    flow = portal["flow"]
    steps = {
        "sign in": lambda: client.post(
            reverse("account_login"), {"login": "admin@acme.test", "password": PASSWORD}
        ),
        "subscription": lambda: client.get(reverse("subscriptions:settings", args=[slug])),
        "invoice history": lambda: client.get(reverse("billing:invoices", args=[slug])),
        "sync info": lambda: client.get(reverse("usage:sync_info", args=[slug])),
        "invoice pdf": lambda: client.get(
            reverse("billing:invoice_pdf", args=[slug, portal["invoice"].number])
        ),
        "users": lambda: client.get(reverse("accounts:users", args=[slug])),
        "invite": lambda: client.post(
            reverse("accounts:user_invite", args=[slug]), {"email": invitee, "role": "member"}
        ),
        "api batch": lambda: client.post(
            "/api/v1/sync-info",
            data=json.dumps(
                {
                    "records": [
                        {
                            "flow_id": str(flow.public_id),
                            "record_key": f"{batch}-{n}",
                            "status": "success",
                            "direction": "outbound",
                            "synced_at": timezone.now().isoformat(),
                        }
                        for n in range(50)
                    ]
                }
            ),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {portal['api_key']}",
            HTTP_IDEMPOTENCY_KEY=batch,
        ),
        "api flows": lambda: client.get(
            "/api/v1/flows", HTTP_AUTHORIZATION=f"Bearer {portal['api_key']}"
        ),
    }
    results = {}
    for name, call in steps.items():
        response, seconds = _timed(committed, call)
        results[name] = (response.status_code, round(seconds, 3))
    return results


def _assert_served(results: dict) -> None:
    for name, (status, seconds) in results.items():
        assert 200 <= status < 400, (name, status, results)
        budget = PDF_BUDGET if name == "invoice pdf" else PAGE_BUDGET
        assert seconds < budget, (name, seconds, results)


def _queued_tasks(server) -> list[tuple[str, list]]:
    """(task name, args) of the messages waiting in the private broker's default queue."""
    client = redis_lib.Redis.from_url(server.url)
    tasks = []
    for raw in client.lrange("celery", 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        tasks.append((message["headers"]["task"], args))
    client.close()
    return tasks


def test_pages_and_api_work_with_redis_stopped_and_email_catches_up(
    client, org, portal, redis_server, committed, caplog, monkeypatch
):
    caplog.set_level(logging.WARNING)
    sign_in_page = client.get(reverse("account_login"))  # a CSRF-less test client; warms up
    assert sign_in_page.status_code == 200

    redis_server.stop()
    down = _journey(
        client, committed, org, portal, invitee="new.person@example.test", batch="down-1"
    )
    print(f"\nRedis stopped, seconds per request: {down}")
    _assert_served(down)
    assert down["sign in"][0] == 302
    assert down["invite"][0] == 302
    assert down["api batch"][0] == 201
    assert "_auth_user_id" in client.session
    assert InvoiceDocument.objects.filter(invoice=portal["invoice"]).count() == 1
    # Nothing was lost, only not queued: the invitation email waits in the database.
    invitation = Invitation.objects.get(organisation=org, email="new.person@example.test")
    invitation_email = OutgoingEmail.objects.get(to_email="new.person@example.test")
    assert (invitation_email.status, invitation_email.attempts) == ("queued", 0)
    assert mail.outbox == []
    # Both failures were logged as warnings: the cache's (fail-open backend) and the broker's.
    warned = {record.name for record in caplog.records if record.levelno == logging.WARNING}
    assert {type(caches["default"]).__module__, "core.queueing"} <= warned

    redis_server.start()
    # The job sends what the broker could not take, once, however often it runs.
    later = timezone.now() + timedelta(minutes=2)
    pending = OutgoingEmail.objects.filter(status="queued").count()
    run_job("deliver_pending_emails", now=later)
    run_job("deliver_pending_emails", now=later + timedelta(minutes=1))
    invitations = [m for m in mail.outbox if m.to == ["new.person@example.test"]]
    assert len(invitations) == 1
    assert org.name in invitations[0].subject
    assert len(mail.outbox) == pending  # every queued email (the invitation, "invoice issued")
    invitation_email.refresh_from_db()
    assert (invitation_email.status, invitation_email.attempts) == ("sent", 1)
    assert invitation.status == "pending"

    # The broker path is back: once the web process tries the broker again (it stops trying
    # for BROKER_RETRY_AFTER_SECONDS after a failure), the next invitation is queued at once,
    # and running its task after the job changes nothing (the row is claimed once).
    later_clock = time.monotonic() + queueing.BROKER_RETRY_AFTER_SECONDS
    monkeypatch.setattr(queueing, "_monotonic", lambda: later_clock)
    mail.outbox.clear()
    started = time.monotonic()
    with committed():
        response = client.post(
            reverse("accounts:user_invite", args=[org.slug]),
            {"email": "second@example.test", "role": "member"},
        )
    assert response.status_code == 302
    assert time.monotonic() - started < PAGE_BUDGET
    second = OutgoingEmail.objects.get(to_email="second@example.test")
    assert _queued_tasks(redis_server) == [("accounts.deliver_email", [second.pk])]
    run_job("deliver_pending_emails", now=timezone.now() + timedelta(minutes=2))
    assert deliver_email.apply(args=[second.pk]).get() is False
    assert [m.to for m in mail.outbox] == [["second@example.test"]]


def test_pages_stay_quick_with_redis_hung(client, org, portal, redis_server, committed):
    """A Redis that accepts connections but never answers (SIGSTOP) must not hold requests:
    short socket timeouts on the cache and the broker, and the cache skips Redis for a while
    after a failure."""
    redis_server.pause()
    hung = _journey(client, committed, org, portal, invitee="hung@example.test", batch="hung-1")
    print(f"\nRedis hung, seconds per request: {hung}")
    redis_server.resume()
    for name, (status, _seconds) in hung.items():
        assert 200 <= status < 400, (name, status, hung)
    # One socket timeout for the cache, then it is skipped; the invitation's publish
    # times out once (socket timeout, one retry).
    assert max(seconds for name, (_s, seconds) in hung.items() if name != "invoice pdf") < 8
    assert sum(seconds for _s, seconds in hung.values()) < 20
    email = OutgoingEmail.objects.get(to_email="hung@example.test")
    assert email.status == "queued"


def test_an_authenticator_code_is_refused_while_redis_is_away_and_a_recovery_code_works(
    client, redis_server, time_machine
):
    """allauth marks a used authenticator-app code in the cache; a cache that forgot the mark
    would accept the code twice, so while Redis is away codes are refused (the settings'
    FAIL_CLOSED_ADD_PREFIXES), and recovery codes, kept in Postgres, still sign in."""
    time_machine.move_to(datetime(2027, 3, 10, 9, 0, 15, tzinfo=UTC), tick=False)
    user = UserFactory(email="two.factor@acme.test")
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    recovery = RecoveryCodes.activate(user).get_unused_codes()[0]
    code = format_hotp_value(hotp_value(secret, int(time.time()) // 30))
    app = Authenticator.objects.get(user=user, type=Authenticator.Type.TOTP).wrap()
    assert app.validate_code(code) is True
    assert app.validate_code(code) is False  # used: Redis remembers

    redis_server.stop()
    time_machine.shift(timedelta(seconds=30))
    fresh = format_hotp_value(hotp_value(secret, int(time.time()) // 30))
    assert app.validate_code(fresh) is False

    sign_in = {"login": user.email, "password": PASSWORD}
    assert client.post(reverse("account_login"), sign_in)["Location"] == reverse("mfa_authenticate")
    refused = client.post(reverse("mfa_authenticate"), {"code": fresh})
    assert refused.status_code == 200
    assert "_auth_user_id" not in client.session
    client.post(reverse("mfa_authenticate"), {"code": recovery})
    assert int(client.session["_auth_user_id"]) == user.pk
