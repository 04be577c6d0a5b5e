"""The scheduled downgrade at the renewal, through billing's run (what `manage.py tick` runs):
the plan switches, the period invoice is for the lower plan, and the flows above its limit
pause (docs/architecture.md#decision-a-downgrade-waits-for-the-renewal)."""

from datetime import UTC, datetime, timedelta

import pytest

from accounts.audit import Actor
from accounts.models import OutgoingEmail
from billing.invoicing import billing_run_issue
from billing.models import Invoice
from subscriptions.models import PlanChange, ProcessFlow, Subscription
from subscriptions.plan_changes import downgrade_schedule
from tests.subscriptions.factories import PERIOD_START, ProcessFlowFactory, plan

pytestmark = pytest.mark.django_db

RENEWAL = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_billing_run_at_the_renewal_applies_the_downgrade(admin, professional, production):
    flows = [
        ProcessFlowFactory(
            environment=production,
            name=f"Flow {n:02}",
            created_at=PERIOD_START - timedelta(days=30 - n),
        )
        for n in range(1, 13)
    ]
    ProcessFlowFactory(environment=production, name="By hand", paused="user")
    change = downgrade_schedule(
        subscription=professional,
        actor=Actor(user=admin),
        plan=plan("standard"),
        keep_flow_ids=[str(flow.public_id) for flow in flows[2:12]],
        now=PERIOD_START + timedelta(days=10),
    )

    assert billing_run_issue(now=RENEWAL - timedelta(seconds=1)) == 0
    assert ProcessFlow.objects.filter(status="active").count() == 12
    assert billing_run_issue(now=RENEWAL) == 1
    assert billing_run_issue(now=RENEWAL) == 0

    subscription = Subscription.objects.get(pk=professional.pk)
    assert (subscription.plan.code, subscription.current_price) == ("standard", 29900)
    assert subscription.current_period_start == RENEWAL
    change.refresh_from_db()
    assert change.status == PlanChange.Status.APPLIED
    invoice = Invoice.objects.get(subscription=subscription, period_start=RENEWAL)
    assert invoice.subtotal == 29900
    paused = ProcessFlow.objects.filter(status="paused").order_by("name")
    assert [(f.name, f.pause_reason, f.paused_at) for f in paused] == [
        ("By hand", "user", PERIOD_START),
        ("Flow 01", "plan_limit", RENEWAL),
        ("Flow 02", "plan_limit", RENEWAL),
    ]
    message = OutgoingEmail.objects.filter(template="downgrade_applied").first()
    assert "  - Flow 01 (Production)\n  - Flow 02 (Production)\n" in message.body_text
