"""Cancel Subscription, its undo and the end at period end (article section 8;
docs/architecture.md#decision-cancellation-ends-at-period-end-and-can-be-undone): services and
the scheduled job."""

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from accounts.audit import Actor
from accounts.models import AuditEvent, Membership, OutgoingEmail
from core.errors import ServiceError
from core.jobs import all_jobs
from subscriptions.cancellation import (
    data_deletion_at,
    subscription_cancel,
    subscription_cancel_undo,
    subscriptions_end_cancelled,
)
from subscriptions.models import BillingCycle, PlanChange, ProcessFlow, Subscription
from tests.accounts.factories import MembershipFactory, UserFactory
from tests.subscriptions.factories import (
    PERIOD_START,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
    plan,
)

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
PERIOD_END = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
AFTER_END = PERIOD_END + timedelta(minutes=5)


def cancel(subscription, actor_user, *, reason="too_expensive", detail="", now=NOW):
    return subscription_cancel(
        subscription=subscription,
        actor=Actor(user=actor_user, ip_address="203.0.113.9"),
        reason=reason,
        detail=detail,
        now=now,
    )


def undo(subscription, actor_user, *, now=NOW):
    return subscription_cancel_undo(
        subscription=subscription, actor=Actor(user=actor_user), now=now
    )


def cancellation_fields(subscription):
    subscription.refresh_from_db()
    return (
        subscription.cancel_at_period_end,
        subscription.canceled_at,
        subscription.cancellation_reason,
        subscription.cancellation_detail,
    )


NOT_CANCELLED = (False, None, "", "")


@pytest.fixture
def recipients(org, admin, billing_user, member):
    """Who is told: the primary email, active Admins and Billing contacts; not Members, not
    deactivated users."""
    MembershipFactory(
        organisation=org,
        role=Membership.Role.ADMIN,
        status=Membership.Status.DEACTIVATED,
        user=UserFactory(email="gone@acme.test"),
    )
    return sorted([org.primary_email, admin.email, billing_user.email])


# Cancel ----------------------------------------------------------------------------------


def test_cancel_sets_the_flags_audits_and_emails_the_dates_monthly(
    org, admin, subscription, recipients, committed
):
    with committed():
        cancel(subscription, admin, reason="switching", detail="  Moving to another iPaaS  ")

    assert cancellation_fields(subscription) == (True, NOW, "switching", "Moving to another iPaaS")
    assert subscription.status == "active"  # the service runs until the period ends
    assert subscription.current_period_end == PERIOD_END
    event = AuditEvent.objects.get(organisation=org, action="subscription.cancelled")
    assert event.actor == admin
    assert event.ip_address == "203.0.113.9"
    assert event.target_id == str(subscription.public_id)
    assert event.changes == {
        "cancel_at_period_end": {"old": False, "new": True},
        "cancellation_reason": {"old": "", "new": "switching"},
        "cancellation_detail": {"old": "", "new": "Moving to another iPaaS"},
        "ends_at": {"old": None, "new": "2026-12-01T09:00:00+00:00"},
    }
    emails = OutgoingEmail.objects.filter(template="subscription_cancelled").order_by("to_email")
    assert [e.to_email for e in emails] == recipients
    email = emails[0]
    assert (
        email.subject == "Your APPSeCONNECT subscription is cancelled: it ends on 1 December 2026"
    )
    body = " ".join(email.body_text.split())
    assert "was cancelled by admin@acme.test on 20 November 2026" in body
    assert "No further charges will be made." in body
    assert (
        "Your service continues until 1 December 2026, the end of the month you have paid for."
        in body
    )
    assert "refund" not in body
    assert "All ProcessFlows stop on 1 December 2026." in body
    assert "permanently deleted on 31 December 2026" in body
    assert "Export your configurations before then" in body
    assert f"{settings.SITE_URL}/o/acme/settings/privacy/" in body
    assert f"{settings.SITE_URL}/o/acme/settings/subscription/" in body
    assert "undo the cancellation until 1 December 2026" in body
    assert "No further charges will be made." in email.body_html
    assert "31 December 2026" in email.body_html


def test_cancel_annual_says_no_refund_and_the_end_of_the_annual_term(org, admin, committed):
    subscription = SubscriptionFactory(
        organisation=org, plan=plan("enterprise"), billing_cycle=BillingCycle.ANNUAL
    )
    with committed():
        cancel(subscription, admin)
    email = OutgoingEmail.objects.get(template="subscription_cancelled", to_email=admin.email)
    body = " ".join(email.body_text.split())
    assert "ends on 1 November 2027" in email.subject
    assert (
        "Your service continues until 1 November 2027, the end of your annual term. "
        "No refund is issued for the unused months." in body
    )
    assert "permanently deleted on 1 December 2027" in body
    assert data_deletion_at(subscription) == datetime(2027, 12, 1, 9, 0, tzinfo=UTC)


def test_email_dates_are_in_the_organisations_time_zone(org, admin):
    org.time_zone = "Asia/Tokyo"
    org.save(update_fields=["time_zone"])
    # 20:00 UTC on 30 November is 1 December in Tokyo.
    subscription = SubscriptionFactory(
        organisation=org, current_period_end=datetime(2026, 11, 30, 20, tzinfo=UTC)
    )
    cancel(subscription, admin)
    email = OutgoingEmail.objects.get(template="subscription_cancelled", to_email=admin.email)
    assert email.subject.endswith("it ends on 1 December 2026")
    assert "permanently deleted on 31 December 2026" in email.body_text


def test_cancel_cancels_a_scheduled_downgrade(org, admin, professional):
    downgrade = PlanChange.objects.create(
        subscription=professional,
        kind=PlanChange.Kind.DOWNGRADE,
        status=PlanChange.Status.SCHEDULED,
        from_plan=plan("professional"),
        to_plan=plan("standard"),
        billing_cycle=BillingCycle.MONTHLY,
        effective_at=PERIOD_END,
    )
    cancel(professional, admin)
    downgrade.refresh_from_db()
    assert (downgrade.status, downgrade.closed_at) == ("canceled", NOW)
    event = AuditEvent.objects.get(action="subscription.cancelled")
    assert event.changes["scheduled_plan_change"] == {"old": "Downgrade to Standard", "new": None}


@pytest.mark.parametrize("status", ["past_due", "grace", "suspended"])
def test_an_unpaid_or_suspended_subscription_may_be_cancelled(org, admin, status):
    subscription = SubscriptionFactory(organisation=org, status=status)
    cancel(subscription, admin)
    assert cancellation_fields(subscription)[0] is True
    email = OutgoingEmail.objects.get(template="subscription_cancelled", to_email=admin.email)
    assert "Invoices already issued and not yet paid stay due." in email.body_text


def assert_refused(call, message, subscription, *, field=None):
    before = cancellation_fields(subscription)
    with pytest.raises(ServiceError) as error:
        call()
    assert error.value.message == message
    assert error.value.field == field
    assert cancellation_fields(subscription) == before
    return error.value


def test_cancelling_twice_is_refused_and_changes_nothing(org, admin, subscription):
    # Told once: the primary email and the Admin.
    cancel(subscription, admin, reason="not_using")
    assert_refused(
        lambda: cancel(subscription, admin, reason="other", detail="Again", now=NOW + timedelta(1)),
        "Your subscription is already cancelled; it ends on 1 December 2026.",
        subscription,
    )
    assert cancellation_fields(subscription) == (True, NOW, "not_using", "")
    assert AuditEvent.objects.filter(action="subscription.cancelled").count() == 1
    assert OutgoingEmail.objects.filter(template="subscription_cancelled").count() == 2


def test_other_without_detail_is_refused(admin, subscription):
    assert_refused(
        lambda: cancel(subscription, admin, reason="other", detail="   "),
        "Tell us more: describe your reason for cancelling in a few words.",
        subscription,
        field="detail",
    )
    assert not AuditEvent.objects.exists()
    assert not OutgoingEmail.objects.exists()


@pytest.mark.parametrize("reason", ["", "bored", "OTHER"])
def test_unknown_reason_is_refused(admin, subscription, reason):
    assert_refused(
        lambda: cancel(subscription, admin, reason=reason),
        "Choose one of the reasons for cancelling.",
        subscription,
        field="reason",
    )


def test_a_subscription_waiting_for_its_first_payment_has_nothing_to_cancel(org, admin):
    subscription = SubscriptionFactory(organisation=org, status="incomplete", activated_at=None)
    assert_refused(
        lambda: cancel(subscription, admin),
        "Your subscription has not started: its first invoice is not paid, so there is "
        "nothing to cancel and nothing more will be charged.",
        subscription,
    )


def test_an_ended_subscription_cannot_be_cancelled(org, admin):
    subscription = SubscriptionFactory(organisation=org, status="ended", ended_at=PERIOD_END)
    assert_refused(
        lambda: cancel(subscription, admin),
        "Your subscription already ended on 1 December 2026.",
        subscription,
    )


def test_cancel_waits_for_a_pending_upgrade_payment(org, admin, subscription):
    PlanChange.objects.create(
        subscription=subscription,
        kind=PlanChange.Kind.UPGRADE,
        status=PlanChange.Status.PENDING,
        from_plan=plan("standard"),
        to_plan=plan("professional"),
        billing_cycle=BillingCycle.MONTHLY,
    )
    assert_refused(
        lambda: cancel(subscription, admin),
        "A plan upgrade is waiting for its payment. Cancel once it has gone through "
        "(see Settings > Billing > Invoice History).",
        subscription,
    )


# Undo ------------------------------------------------------------------------------------


def test_undo_clears_the_cancellation_keeps_the_reason_in_the_audit_and_cancel_works_again(
    org, admin, subscription
):
    cancel(subscription, admin, reason="other", detail="Budget freeze")
    undo(subscription, admin, now=NOW + timedelta(days=1))

    assert cancellation_fields(subscription) == NOT_CANCELLED
    event = AuditEvent.objects.get(action="subscription.cancellation_undone")
    assert event.actor == admin
    assert event.created_at == NOW + timedelta(days=1)
    assert event.changes == {
        "cancel_at_period_end": {"old": True, "new": False},
        "cancellation_reason": {"old": "other", "new": ""},
        "cancellation_detail": {"old": "Budget freeze", "new": ""},
        "canceled_at": {"old": "2026-11-20T10:00:00+00:00", "new": None},
    }

    later = NOW + timedelta(days=2)
    cancel(subscription, admin, reason="too_expensive", now=later)
    assert cancellation_fields(subscription) == (True, later, "too_expensive", "")
    assert AuditEvent.objects.filter(action="subscription.cancelled").count() == 2


def test_undo_after_the_period_ended_is_refused(org, admin, subscription):
    cancel(subscription, admin)
    assert_refused(
        lambda: undo(subscription, admin, now=PERIOD_END),
        "The period ended on 1 December 2026; choose a plan to subscribe again.",
        subscription,
    )
    subscriptions_end_cancelled(now=AFTER_END)
    subscription.refresh_from_db()
    with pytest.raises(ServiceError) as error:
        undo(subscription, admin, now=AFTER_END)
    assert error.value.message == (
        "The period ended on 1 December 2026; choose a plan to subscribe again."
    )
    subscription.refresh_from_db()
    assert subscription.status == "ended"
    assert not AuditEvent.objects.filter(action="subscription.cancellation_undone").exists()


def test_undo_without_a_cancellation_is_refused(admin, subscription):
    assert_refused(
        lambda: undo(subscription, admin), "Your subscription is not cancelled.", subscription
    )


# The end at period end -------------------------------------------------------------------


@pytest.fixture
def flows(org, production):
    return {
        "running": ProcessFlowFactory.create_batch(2, environment=production),
        "user": ProcessFlowFactory(environment=production, paused="user"),
        "plan_limit": ProcessFlowFactory(environment=production, paused="plan_limit"),
    }


def flow_states(org):
    return sorted(
        ProcessFlow.objects.filter(organisation=org).values_list("name", "status", "pause_reason")
    )


def test_the_job_ends_the_subscription_at_period_end_and_stops_only_running_flows(
    org, other_org, admin, recipients, subscription, flows, committed
):
    # Another organisation's running flow and uncancelled subscription are left alone.
    other = SubscriptionFactory(organisation=other_org)
    elsewhere = ProcessFlowFactory(environment=EnvironmentFactory(organisation=other_org))
    cancel(subscription, admin)
    OutgoingEmail.objects.all().delete()

    assert subscriptions_end_cancelled(now=PERIOD_END - timedelta(seconds=1)) == 0
    subscription.refresh_from_db()
    assert subscription.status == "active"

    with committed():
        assert subscriptions_end_cancelled(now=AFTER_END) == 1

    subscription.refresh_from_db()
    assert subscription.status == "ended"
    assert subscription.ended_at == AFTER_END
    assert subscription.status_changed_at == AFTER_END
    # The record of the cancellation stays; the pending flag is cleared.
    assert cancellation_fields(subscription) == (False, NOW, "too_expensive", "")
    by_name = {f.name: f for f in ProcessFlow.objects.filter(organisation=org)}
    for flow in flows["running"]:
        stopped = by_name[flow.name]
        assert (stopped.status, stopped.pause_reason, stopped.paused_at) == (
            "paused",
            "cancelled",
            AFTER_END,
        )
    user_paused = by_name[flows["user"].name]
    assert (user_paused.pause_reason, user_paused.paused_at) == ("user", PERIOD_START)
    assert by_name[flows["plan_limit"].name].pause_reason == "plan_limit"
    elsewhere.refresh_from_db()
    other.refresh_from_db()
    assert (elsewhere.status, other.status) == ("active", "active")

    event = AuditEvent.objects.get(action="subscription.ended")
    assert (event.organisation, event.actor, event.created_at) == (org, None, AFTER_END)
    assert event.changes == {
        "status": {"old": "active", "new": "ended"},
        "process_flows_stopped": {"old": None, "new": 2},
    }
    emails = OutgoingEmail.objects.filter(template="subscription_ended").order_by("to_email")
    assert [e.to_email for e in emails] == recipients
    email = emails[0]
    assert email.subject == "Your APPSeCONNECT subscription has ended"
    body = " ".join(email.body_text.split())
    assert (
        "ended on 1 December 2026 (it was cancelled on 20 November 2026). The service has "
        "stopped: 2 ProcessFlows stopped" in body
    )
    assert "kept until 31 December 2026, then permanently deleted" in body
    assert f"{settings.SITE_URL}/o/acme/settings/subscription/choose-plan/" in body
    assert "/o/acme/settings/subscription/choose-plan/" in email.body_html

    # Safe twice: the second run finds nothing and changes nothing.
    states = flow_states(org)
    assert subscriptions_end_cancelled(now=AFTER_END + timedelta(minutes=15)) == 0
    assert flow_states(org) == states
    assert AuditEvent.objects.filter(action="subscription.ended").count() == 1
    assert OutgoingEmail.objects.filter(template="subscription_ended").count() == 3


def test_a_suspended_cancelled_subscription_ends_and_keeps_the_suspension_reason(
    org, admin, production
):
    subscription = SubscriptionFactory(organisation=org, status="suspended")
    flow = ProcessFlowFactory(environment=production, paused="suspension")
    cancel(subscription, admin)
    assert subscriptions_end_cancelled(now=AFTER_END) == 1
    subscription.refresh_from_db()
    flow.refresh_from_db()
    assert (subscription.status, flow.pause_reason) == ("ended", "suspension")


def test_the_job_works_in_batches():
    subscriptions = [SubscriptionFactory(cancel_at_period_end=True) for _ in range(5)]
    assert subscriptions_end_cancelled(now=AFTER_END, batch_size=2) == 5
    assert set(
        Subscription.objects.filter(pk__in=[s.pk for s in subscriptions]).values_list(
            "status", flat=True
        )
    ) == {"ended"}


def test_the_job_is_registered_before_the_billing_run():
    jobs = {job.name: job for job in all_jobs()}
    job = jobs["end_cancelled_subscriptions"]
    assert job.order < jobs["billing_run"].order
    assert str(job.schedule) == "<crontab: */15 * * * * (m/h/dM/MY/d)>"


def test_tick_ends_it_once_alongside_the_other_jobs(org, admin, subscription, flows):
    cancel(subscription, admin)
    out = StringIO()
    call_command("tick", "--now", AFTER_END.isoformat(), stdout=out)
    assert "end_cancelled_subscriptions: 1 cancelled subscription(s) ended" in out.getvalue()
    assert "billing_run: 0 invoice(s) issued" in out.getvalue()
    subscription.refresh_from_db()
    assert subscription.status == "ended"
    states = flow_states(org)
    assert [s[2] for s in states].count("cancelled") == 2

    out = StringIO()
    call_command("tick", "--now", AFTER_END.isoformat(), stdout=out)
    assert "end_cancelled_subscriptions: 0 cancelled subscription(s) ended" in out.getvalue()
    assert flow_states(org) == states
    # No invoice is issued for a cancelled subscription's period end (the billing run skips it).
    assert "billing_run: 0 invoice(s) issued" in out.getvalue()
