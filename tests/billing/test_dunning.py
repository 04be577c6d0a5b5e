"""Failed payments (billing.dunning, billing.collection): the day 0/3/7/14 schedule through
`tick`, Retry Payment, resume."""

import threading
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection

from accounts.audit import Actor
from accounts.models import AuditEvent
from billing.collection import dunning_advance, retry_after_card_update, retry_payment
from billing.models import DunningCase, DunningStep, Invoice, Payment
from core.errors import ServiceError
from devkit.stripe_standin import CHARGE_FAILS
from subscriptions.models import ProcessFlow, Subscription
from tests.billing.helpers import START, add_card, subscribe
from tests.subscriptions.factories import EnvironmentFactory, ProcessFlowFactory

pytestmark = pytest.mark.django_db

RENEWAL = datetime(2026, 2, 28, 10, 0, tzinfo=UTC)


def tick(at):
    call_command("tick", "--now", at.isoformat(), stdout=StringIO())


def status(org):
    return Subscription.objects.get(organisation=org).status


def subjects():
    return [m.subject for m in mail.outbox]


@pytest.fixture
def failing(subscribed, org, committed):
    """Renewal invoice charged to a card that fails; two running flows and one paused by a user."""
    environment = EnvironmentFactory(organisation=org)
    running = ProcessFlowFactory.create_batch(2, organisation=org, environment=environment)
    ProcessFlowFactory(
        organisation=org, environment=environment, status="paused", pause_reason="user"
    )
    add_card(org, number=CHARGE_FAILS)
    mail.outbox.clear()
    return running


def flows(org):
    return sorted(
        ProcessFlow.objects.filter(organisation=org).values_list("status", "pause_reason")
    )


def test_the_whole_schedule_then_payment_restores_the_service(failing, org, committed, localstripe):
    with committed():
        tick(RENEWAL)  # day 0
    case = DunningCase.objects.get()
    assert status(org) == "past_due"
    assert list(case.steps.values_list("step", flat=True)) == ["day_0"]
    invoice = Invoice.objects.get(status="open")
    assert len([s for s in subjects() if s == f"Payment failed for invoice {invoice.number}"]) == 2

    for day, expected_status, email in (
        (3, "past_due", "Reminder: payment still failing"),
        (7, "grace", "Final payment attempt failed"),
        (14, "suspended", "is suspended: all ProcessFlows are paused"),
    ):
        mail.outbox.clear()
        with committed():
            tick(RENEWAL + timedelta(days=day))
            tick(RENEWAL + timedelta(days=day, hours=2))  # twice a day: nothing more
        assert status(org) == expected_status, day
        assert len([s for s in subjects() if email in s]) == 2, (day, subjects())
        assert not [s for s in subjects() if s.startswith("Payment failed")], day

    assert list(case.steps.order_by("ran_at").values_list("step", "attempts")) == [
        ("day_0", 1),
        ("day_3", 1),
        ("day_7", 1),
        ("day_14", 0),
    ]
    assert invoice.payments.count() == 3
    assert flows(org) == [("paused", "suspension"), ("paused", "suspension"), ("paused", "user")]
    assert Invoice.objects.filter(status="open").count() == 1  # no new invoice while suspended

    # Day 15: the Admin updates the card; the open invoice is retried at once and paid.
    mail.outbox.clear()
    with committed():
        add_card(org, now=RENEWAL + timedelta(days=15))
        outcome = retry_after_card_update(organisation=org, now=RENEWAL + timedelta(days=15))
    assert outcome.succeeded
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert status(org) == "active"
    case.refresh_from_db()
    assert case.status == "resolved"
    assert flows(org) == [("active", ""), ("active", ""), ("paused", "user")]
    assert any("Payment received, service restored" in s for s in subjects())


def test_retry_payment_on_day_5_stops_the_schedule(failing, org, committed):
    with committed():
        tick(RENEWAL)
        tick(RENEWAL + timedelta(days=3))
    add_card(org)
    outcome = retry_payment(
        organisation=org, actor=Actor(user=None), now=RENEWAL + timedelta(days=5)
    )
    assert (outcome.attempts, outcome.paid) == (1, 1)
    assert status(org) == "active"
    tick(RENEWAL + timedelta(days=7))
    tick(RENEWAL + timedelta(days=14))
    assert status(org) == "active"
    assert not DunningStep.objects.filter(step__in=["day_7", "day_14"]).exists()
    assert flows(org) == [("active", ""), ("active", ""), ("paused", "user")]


def test_retry_payment_with_nothing_due(subscribed, org):
    with pytest.raises(ServiceError, match="Nothing is due"):
        retry_payment(organisation=org, actor=Actor(user=None), now=START)


def test_a_late_schedule_runs_only_the_latest_step(failing, org):
    tick(RENEWAL)
    tick(RENEWAL + timedelta(days=8))  # day 3 was missed
    steps = dict(DunningStep.objects.values_list("step", "result"))
    assert steps["day_3"] == "skipped: the schedule ran late"
    assert status(org) == "grace"
    assert Invoice.objects.get(status="open").payments.count() == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_workers_run_each_step_once(localstripe):
    from tests.accounts.factories import MembershipFactory, OrganisationFactory

    org = OrganisationFactory()
    MembershipFactory(organisation=org, role="admin")
    subscribe(org)
    add_card(org, number=CHARGE_FAILS)
    tick(RENEWAL)
    mail.outbox.clear()
    barrier = threading.Barrier(2)

    def work():
        try:
            barrier.wait()
            dunning_advance(now=RENEWAL + timedelta(days=3))
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert DunningStep.objects.filter(step="day_3").count() == 1
    assert Payment.objects.filter(invoice__status="open").count() == 2  # day 0 and day 3
    assert len([m for m in mail.outbox if "Reminder" in m.subject]) == 2  # admin + primary email


def test_processor_down_during_a_retry_then_back(failing, org, settings, localstripe):
    tick(RENEWAL)
    add_card(org)  # a good card now, but the processor is unreachable at the retry
    reachable = settings.STRIPE_API_BASE
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    settings.STRIPE_TIMEOUT_SECONDS = 2
    dunning_advance(now=RENEWAL + timedelta(days=3))
    step = DunningStep.objects.get(step="day_3")
    assert "processor did not answer" in step.result
    invoice = Invoice.objects.get(status="open")
    assert invoice.payments.filter(status="pending").count() == 1
    settings.STRIPE_API_BASE = reachable
    tick(RENEWAL + timedelta(days=3, minutes=5))  # the charge job retries with the same key
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert status(org) == "active"
    paid = invoice.payments.get(status="succeeded")
    assert paid.attempt == 2  # the pending attempt itself, not a new one
    charged = [
        pi
        for pi in localstripe.v1.payment_intents.list().data
        if pi["metadata"]["invoice"] == invoice.number and pi["status"] == "succeeded"
    ]
    assert len(charged) == 1


def test_overdue_bank_transfer_follows_the_schedule_without_charges(subscribed, org, committed):
    from billing.invoicing import billing_run_issue
    from billing.payments import payment_record_manual

    Subscription.objects.filter(organisation=org).update(
        billing_cycle="annual", payment_method_kind="bank_transfer"
    )
    billing_run_issue(now=RENEWAL)
    invoice = Invoice.objects.get(status="open")
    due = invoice.due_at
    mail.outbox.clear()
    with committed():
        tick(due - timedelta(hours=1))
        assert status(org) == "active"
        tick(due + timedelta(minutes=1))
    assert status(org) == "past_due"
    assert any(s.startswith("Payment overdue for") for s in subjects())
    tick(due + timedelta(days=7))
    tick(due + timedelta(days=14))
    assert status(org) == "suspended"
    assert invoice.payments.count() == 0  # never charged automatically
    # Ops record the transfer: the account is restored.
    payment_record_manual(
        invoice=invoice, actor=Actor(user=None), reference="BANK-9", now=due + timedelta(days=15)
    )
    assert status(org) == "active"
    assert DunningCase.objects.get().status == "resolved"


def test_ops_extend_the_grace_period_and_write_off(failing, org, client):
    from tests.accounts.factories import UserFactory

    ops = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(ops)
    tick(RENEWAL)
    tick(RENEWAL + timedelta(days=7))
    case = DunningCase.objects.get()
    client.post(
        "/admin/billing/dunningcase/",
        {
            "action": "extend_grace",
            "_selected_action": [case.pk],
            "apply": "1",
            "reason": "Customer's bank delay",
        },
    )
    case.refresh_from_db()
    assert case.grace_extension_days == 7
    event = AuditEvent.objects.get(action="billing.grace_extended")
    assert event.changes["reason"]["new"] == "Customer's bank delay"
    tick(RENEWAL + timedelta(days=14))
    assert status(org) == "grace"  # suspension moved to day 21
    assert client.get(f"/admin/billing/dunningcase/{case.pk}/change/").status_code == 200
    assert (
        client.get(f"/admin/subscriptions/subscription/{case.subscription_id}/change/").status_code
        == 200
    )
    invoice = Invoice.objects.get(status="open")
    client.post(
        "/admin/billing/invoice/",
        {
            "action": "mark_uncollectible",
            "_selected_action": [invoice.pk],
            "apply": "1",
            "reason": "Agreed write-off",
        },
    )
    invoice.refresh_from_db()
    assert invoice.status == "uncollectible"
    assert status(org) == "active"
