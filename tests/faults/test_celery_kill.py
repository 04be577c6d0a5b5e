"""Fault: a Celery worker killed in the middle of the billing run and of dunning.

Work is late, never lost
(docs/architecture.md#decision-failures-of-a-dependency-make-work-late-never-lost). Tasks are
acknowledged late (CELERY_TASK_ACKS_LATE), so a task whose worker dies is delivered again, and
every job is safe to run twice: these tests kill real worker processes mid-task and check that
the re-run leaves the books exactly right.

- The billing run: the whole worker (solo pool) is SIGKILLed after some batches committed;
  the message stays unacknowledged in Redis and a new worker restores it once the broker's
  visibility timeout has passed (CELERY_VISIBILITY_TIMEOUT, 1 s here, 3600 s by default).
  Both sides of that check are the workers' clocks, not Redis's: the first worker stamps the
  message with its time(), the new one restores what is older than its time() minus the
  timeout. So the redelivery needs the two workers to share a clock, which a moved clock
  keeps (scripts/test_dates.sh shifts every process by one offset; libfaketime's "@instant"
  would start each new process at that instant again, and the new worker would wait out the
  time the first one had run).
- Dunning: the pool child (prefork) running the day-3 step with its charge retries is
  SIGKILLed; the parent rejects the message (CELERY_TASK_REJECT_ON_WORKER_LOST) and it is
  delivered again at once. The step interrupted half-way is finished by the next run after
  its lease (billing.dunning.STEP_RESUME_AFTER), charging nothing twice.
- The windows a kill can land in during a dunning step (claimed; charged but the answer not
  recorded; answered but the step not recorded), each reached on purpose in this process.

Everything runs against private services (tests/faults/private_services.py): a Redis as
broker and a localstripe, so the shared ones are never reset. The worker is a subprocess on
the committed test database (transactional tests). Slow: about 30 s for the module.
"""

import base64
import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as redis_lib
import stripe
from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.core import mail
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from accounts.models import OutgoingEmail
from billing.collection import dunning_advance
from billing.models import (
    BillingProfile,
    DunningCase,
    DunningStep,
    Invoice,
    InvoiceSequence,
    Payment,
    PaymentMethod,
)
from billing.payments import invoices_charge_due
from core.jobs import run_job
from core.tasks import run_scheduled_job
from devkit.stripe_standin import CHARGE_FAILS, VISA, card_exp_year
from subscriptions.models import Subscription
from tests.accounts.factories import OrganisationFactory
from tests.billing.factories import issued_invoice
from tests.faults.private_services import (
    PROJECT_ROOT,
    celery_broker,
    private_localstripe,
    private_redis,
    redis_server_binary,
)
from tests.subscriptions.factories import SubscriptionFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(redis_server_binary() is None, reason="redis-server is not installed"),
    pytest.mark.timeout(180),
]

QUEUE = "faults-jobs"  # the worker consumes only this: PDF and email tasks stay queued
VISIBILITY_TIMEOUT = 1  # seconds (CELERY_VISIBILITY_TIMEOUT of the worker)


class Worker:
    """A `celery worker` subprocess on the test database and the private broker."""

    def __init__(self, *, env: dict, pool: str, log: Path, name: str):
        self.env = env
        self.pool = pool
        self.log = log
        self.name = name
        self.process: subprocess.Popen | None = None

    def start(self) -> "Worker":
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "billing_portal",
                    "worker",
                    f"--pool={self.pool}",
                    "--concurrency=1",
                    "-Q",
                    QUEUE,
                    "-n",
                    f"{self.name}@faults",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel=INFO",
                ],
                env=self.env,
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() takes the pool too
            )
        return self

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def kill(self) -> None:
        """SIGKILL the worker and its pool: no warm shutdown, no chance to ack or requeue."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def rig(tmp_path):
    """Private Redis + localstripe, this process publishing to that Redis, and a way to start
    workers that see the committed test database. Kills every worker it started."""
    workers: list[Worker] = []
    with private_redis() as redis, private_localstripe() as stripe_base:
        db = connection.settings_dict  # NAME is the test database, e.g. test_billing_portal
        password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "billing_portal.settings",
            "DEBUG": "1",
            "DATABASE_URL": (
                f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
            ),
            "REDIS_URL": redis.url,
            "CELERY_BROKER_URL": redis.url,
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "STRIPE_API_BASE": stripe_base,
            "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "plain",
            "PYTHONUNBUFFERED": "1",
        }
        log = tmp_path / "worker.log"

        def start(pool: str) -> Worker:
            worker = Worker(env=env, pool=pool, log=log, name=f"w{len(workers)}").start()
            workers.append(worker)
            return worker

        with override_settings(STRIPE_API_BASE=stripe_base), celery_broker(redis.url):
            try:
                yield _Rig(start=start, log=log, stripe_base=stripe_base, redis=redis)
            finally:
                for worker in workers:
                    worker.kill()


class _Rig:
    def __init__(self, *, start, log, stripe_base, redis):
        self.start_worker = start
        self.log = log
        self.stripe_base = stripe_base
        self.redis = redis

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stripe(self) -> stripe.StripeClient:
        return stripe.StripeClient(
            api_key=settings.STRIPE_SECRET_KEY,
            base_addresses={"api": self.stripe_base},
            max_network_retries=0,
        )


def wait_for(check, *, timeout: float, what: str, rig: _Rig, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = "\n".join(rig.log_text().splitlines()[-40:])
            raise AssertionError(f"timed out waiting for {what}; worker log:\n{tail}")
        time.sleep(interval)


def task_lines(rig: _Rig, task_id: str, word: str) -> int:
    return len(re.findall(rf"\[{re.escape(task_id)}\] {word}", rig.log_text()))


# The billing run --------------------------------------------------------------------------

SUBSCRIPTIONS = 300
PERIODS_BEHIND = 6  # each subscription gets 6 invoices: 6 committed batches of 300


def test_billing_run_redelivered_after_the_worker_is_killed(rig):
    now = timezone.now()
    anchor = now - relativedelta(months=PERIODS_BEHIND) - timedelta(days=1)
    subscriptions = [
        SubscriptionFactory(anchor_at=anchor, organisation=OrganisationFactory())
        for _ in range(SUBSCRIPTIONS)
    ]
    expected = SUBSCRIPTIONS * PERIODS_BEHIND

    worker = rig.start_worker("solo")
    wait_for(lambda: "ready." in rig.log_text(), timeout=30, what="worker ready", rig=rig)
    sent_at = time.monotonic()
    task_id = run_scheduled_job.apply_async(args=["billing_run"], queue=QUEUE).id

    # Some but not all batches committed: kill the whole worker, pool and all.
    wait_for(lambda: Invoice.objects.exists(), timeout=30, what="first batch", rig=rig)
    worker.kill()
    killed_at = time.monotonic()
    time.sleep(0.2)  # the killed backend's open transaction is rolled back by now
    at_kill = Invoice.objects.count()
    assert 0 < at_kill < expected
    assert at_kill % SUBSCRIPTIONS == 0  # whole batches only: each is one transaction
    assert task_lines(rig, task_id, "succeeded") == 0

    rig.start_worker("solo")
    wait_for(
        lambda: task_lines(rig, task_id, "received") == 2,
        timeout=30,
        what="redelivery",
        rig=rig,
    )
    redelivered_at = time.monotonic()
    wait_for(
        lambda: task_lines(rig, task_id, "succeeded") == 1,
        timeout=60,
        what="re-run to finish",
        rig=rig,
    )
    done_at = time.monotonic()
    print(
        f"\nbilling run: {at_kill}/{expected} invoices at the kill "
        f"({killed_at - sent_at:.1f} s after sending); redelivered "
        f"{redelivered_at - killed_at:.1f} s after the kill (worker start included); "
        f"finished {done_at - redelivered_at:.1f} s later"
    )

    # Every due period invoiced exactly once, numbered without gaps, nothing left due.
    invoices = list(Invoice.objects.values_list("subscription_id", "period_start", "number"))
    assert len(invoices) == expected
    per_subscription = Counter(subscription_id for subscription_id, _, _ in invoices)
    assert per_subscription == {s.pk: PERIODS_BEHIND for s in subscriptions}
    assert len({(s, start) for s, start, _ in invoices}) == expected
    numbers = sorted(int(number.rsplit("-", 1)[1]) for _, _, number in invoices)
    assert numbers == list(range(1, expected + 1))
    assert InvoiceSequence.objects.get().last_number == expected
    assert not Subscription.objects.filter(current_period_end__lte=now).exists()
    assert Payment.objects.count() == 0  # the billing run only issues; charging is its own job
    # The PDF tasks queued after each committed batch: each invoice once at most (a batch
    # killed before its commit queued nothing; render_invoice_pdfs renders any missed).
    queued = [invoice_id for _name, ids in _queued(rig) for invoice_id in ids]
    assert len(queued) == len(set(queued))
    assert set(queued) <= set(Invoice.objects.values_list("pk", flat=True))


def _queued(rig: _Rig) -> list[tuple[str, list]]:
    """(task name, first argument) of the messages waiting in the broker's default queue."""
    client = redis_lib.Redis.from_url(rig.redis.url)
    try:
        messages = [json.loads(raw) for raw in client.lrange("celery", 0, -1)]
    finally:
        client.close()
    return [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0][0]) for m in messages]


# Dunning ------------------------------------------------------------------------------------

CASES = 60


def _failing_case(*, card: str, started_at, client: stripe.StripeClient):
    """A past-due subscription on day 3 of its case: one open card invoice whose first charge
    failed, the card on file in localstripe (VISA now pays, CHARGE_FAILS declines again)."""
    organisation = OrganisationFactory()
    customer = client.v1.customers.create(params={"name": organisation.name})
    method = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": card, "exp_month": 12, "exp_year": card_exp_year(), "cvc": "123"},
        }
    )
    client.v1.payment_methods.attach(method["id"], params={"customer": customer["id"]})
    BillingProfile.objects.create(organisation=organisation, stripe_customer_id=customer["id"])
    card_row = PaymentMethod.objects.create(
        organisation=organisation,
        stripe_payment_method_id=method["id"],
        brand="visa",
        last4=card[-4:],
        exp_month=12,
        exp_year=2030,
        expires_at=timezone.now() + timedelta(days=1000),
    )
    subscription = SubscriptionFactory(
        organisation=organisation,
        status=Subscription.Status.PAST_DUE,
        anchor_at=started_at,
    )
    invoice = issued_invoice(
        organisation=organisation,
        subscription=subscription,
        currency="USD",
        issued_at=started_at,
        due_at=started_at,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
    )
    Payment.objects.create(
        organisation=organisation,
        invoice=invoice,
        method_kind="card",
        payment_method=card_row,
        attempt=1,
        amount=invoice.total,
        currency="USD",
        status=Payment.Status.FAILED,
        idempotency_key=f"invoice-{invoice.public_id}-attempt-1",
        failure_code="card_declined",
        created_at=started_at,
        completed_at=started_at,
    )
    case = DunningCase.objects.create(
        organisation=organisation, subscription=subscription, started_at=started_at
    )
    DunningStep.objects.create(case=case, step="day_0", ran_at=started_at, attempts=1)
    return case


def test_dunning_redelivered_after_the_pool_child_is_killed(rig):
    client = rig.stripe()
    started_at = timezone.now() - timedelta(days=3, hours=1)
    cards = {}
    for n in range(CASES):
        card = VISA if n % 2 == 0 else CHARGE_FAILS
        case = _failing_case(card=card, started_at=started_at, client=client)
        cards[case.subscription_id] = card

    worker = rig.start_worker("prefork")
    wait_for(lambda: "ready." in rig.log_text(), timeout=30, what="worker ready", rig=rig)
    task_id = run_scheduled_job.apply_async(args=["dunning_steps"], queue=QUEUE).id

    def day_3_steps() -> int:
        return DunningStep.objects.filter(step="day_3").count()

    # Kill the child twice: in the 15th case (a card that pays now) and, after the first
    # redelivery, in the 30th (a card declined again). Cases run in the order created.
    for kill, threshold in enumerate((CASES // 4, CASES // 2), start=1):
        wait_for(lambda t=threshold: day_3_steps() >= t, timeout=30, what="day-3 steps", rig=rig)
        [child] = worker.children()
        os.kill(child, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(0.2)
        at_kill = day_3_steps()
        assert at_kill < CASES
        wait_for(
            lambda k=kill: task_lines(rig, task_id, "received") == k + 1,
            timeout=30,
            what="redelivery",
            rig=rig,
        )
        print(
            f"\ndunning: child killed with {at_kill}/{CASES} day-3 steps claimed; task "
            f"redelivered {time.monotonic() - killed_at:.1f} s later"
        )
    wait_for(
        lambda: task_lines(rig, task_id, "succeeded") == 1,
        timeout=60,
        what="the redelivered task to finish",
        rig=rig,
    )
    print(f"dunning: finished {time.monotonic() - killed_at:.1f} s after the second kill")
    assert rig.log_text().count("WorkerLostError") >= 2
    worker.kill()

    # The step the child was in the middle of is claimed but unfinished. The next run after
    # its lease (beat runs the job every 15 minutes) finishes it; later runs change nothing.
    interrupted = list(DunningStep.objects.filter(step="day_3", result="running"))
    assert len(interrupted) <= 2
    later = timezone.now() + timedelta(minutes=6)
    run_job("dunning_steps", now=later)
    run_job("dunning_steps", now=later + timedelta(minutes=15))
    run_job("charge_open_invoices", now=later + timedelta(minutes=15))

    steps = Counter(DunningStep.objects.values_list("case__subscription_id", "step"))
    assert set(steps.values()) == {1}
    assert {step for _subscription, step in steps} == {"day_0", "day_3"}
    assert len(steps) == 2 * CASES
    # Finished, unless the charge before the kill paid the invoice and closed the case: then
    # nothing is left to do and the claim stays as it was.
    assert not DunningStep.objects.filter(result="running", case__status="open").exists()
    for step in interrupted:
        step.refresh_from_db()
        print(f"interrupted step: case {step.case_id}, now {step.result!r}")

    intents = _payment_intents(client)
    for subscription in Subscription.objects.select_related("organisation"):
        invoice = Invoice.objects.get(subscription=subscription)
        payments = list(invoice.payments.order_by("attempt"))
        card = cards[subscription.pk]
        mine = [i for i in intents if i["metadata"]["invoice"] == invoice.number]
        # The day-3 retry charged the card exactly once: one payment attempt, one
        # PaymentIntent, whether or not it was the charge the kill interrupted.
        assert [p.attempt for p in payments] == [1, 2], invoice.number
        assert len(mine) == 1, (invoice.number, mine)
        assert mine[0]["metadata"]["idempotency_key"] == payments[1].idempotency_key
        emails = Counter(
            OutgoingEmail.objects.filter(organisation=subscription.organisation).values_list(
                "template", flat=True
            )
        )
        if card == VISA:
            assert (invoice.status, payments[1].status, subscription.status) == (
                "paid",
                "succeeded",
                "active",
            )
            assert mine[0]["status"] == "succeeded"
            assert emails == {"payment_receipt": 1, "service_restored": 1}
        else:
            assert (invoice.status, payments[1].status, subscription.status) == (
                "open",
                "failed",
                "past_due",
            )
            assert emails == {"payment_reminder": 1}

    # Delivering the queued emails sends each once.
    mail.outbox.clear()
    run_job("deliver_pending_emails", now=later + timedelta(minutes=20))
    assert len(mail.outbox) == OutgoingEmail.objects.count() == CASES + CASES // 2


def _payment_intents(client: stripe.StripeClient) -> list:
    intents = []
    for customer_id in BillingProfile.objects.values_list("stripe_customer_id", flat=True):
        page = client.v1.payment_intents.list(params={"customer": customer_id, "limit": 100})
        intents.extend(page.auto_paging_iter())
    return intents


# The same windows, deterministically -------------------------------------------------------
# A kill lands somewhere between claiming a step and recording it; which window the tests
# above hit depends on timing. Here each window is reached on purpose, in this process: the
# "kill" is an exception no code of ours catches, raised at that point.


class _Killed(BaseException):
    pass


def _die_after(func):
    def wrapper(*args, **kwargs):
        with contextlib.suppress(Exception):  # a decline is an answer too
            func(*args, **kwargs)
        raise _Killed

    return wrapper


def _die_before(func):
    def wrapper(*args, **kwargs):
        raise _Killed

    return wrapper


@pytest.mark.parametrize("card", [VISA, CHARGE_FAILS], ids=["pays", "declined"])
@pytest.mark.parametrize(
    ("window", "target", "die"),
    [
        ("claimed, nothing charged", "billing.collection.charge_open_invoices", _die_before),
        ("charged, answer not recorded", "billing.gateway.charge", _die_after),
        ("answer recorded, step not", "billing.collection.charge_open_invoices", _die_after),
    ],
)
def test_an_interrupted_dunning_step_is_finished_once(monkeypatch, card, window, target, die):
    with private_localstripe() as stripe_base, override_settings(STRIPE_API_BASE=stripe_base):
        client = stripe.StripeClient(
            api_key=settings.STRIPE_SECRET_KEY,
            base_addresses={"api": stripe_base},
            max_network_retries=0,
        )
        now = timezone.now()
        case = _failing_case(card=card, started_at=now - timedelta(days=3, hours=1), client=client)
        module, name = target.rsplit(".", 1)
        module = importlib.import_module(module)
        with monkeypatch.context() as patch:
            patch.setattr(module, name, die(getattr(module, name)))
            with pytest.raises(_Killed):
                dunning_advance(now=now)
        step = DunningStep.objects.get(case=case, step="day_3")
        assert step.result == "running", window

        # Within its lease the step may still be running somewhere: left alone.
        assert dunning_advance(now=now + timedelta(minutes=1)) == 0
        dunning_advance(now=now + timedelta(minutes=6))
        dunning_advance(now=now + timedelta(minutes=30))
        invoices_charge_due(now=now + timedelta(minutes=30))

        invoice = Invoice.objects.get(subscription=case.subscription)
        payments = list(invoice.payments.order_by("attempt"))
        intents = list(
            client.v1.payment_intents.list(
                params={"customer": BillingProfile.objects.get().stripe_customer_id}
            ).auto_paging_iter()
        )
        assert [p.attempt for p in payments] == [1, 2], window
        assert [i["metadata"]["idempotency_key"] for i in intents] == [
            payments[1].idempotency_key
        ], window
        templates = Counter(OutgoingEmail.objects.values_list("template", flat=True))
        step.refresh_from_db()
        case.refresh_from_db()
        if card == VISA:
            assert (invoice.status, payments[1].status, case.status) == (
                "paid",
                "succeeded",
                "resolved",
            )
            assert templates == {"payment_receipt": 1, "service_restored": 1}
        else:
            assert (invoice.status, payments[1].status, case.status) == ("open", "failed", "open")
            assert templates == {"payment_reminder": 1}
            assert step.result.startswith("resumed after an interruption; "), step.result
