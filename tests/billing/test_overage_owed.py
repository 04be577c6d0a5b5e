"""Overage that is owed whenever the job next runs: months held while a cancellation was
pending, a job that comes months late, and the final usage month of a cancelled subscription.

Standard: 50,000 transactions a month, $5.00 per started 1,000 above that.
"""

from datetime import timedelta

import pytest
from dateutil.relativedelta import relativedelta

from accounts.audit import Actor
from billing.invoicing import billing_run_issue, overage_invoices_issue
from billing.ledger import check_overage
from billing.models import Invoice, OverageCharge
from core.jobs import run_job
from subscriptions.cancellation import subscription_cancel, subscription_cancel_undo
from subscriptions.models import BillingCycle, PaymentMethodKind, Subscription
from tests.billing.test_overage import LIMIT, RENEWAL, use
from tests.subscriptions.factories import PERIOD_START, SubscriptionFactory

pytestmark = pytest.mark.django_db


def overage_findings(org, now):
    return [v.message for v in check_overage(now=now, organisation_ids=[org.pk])]


def tick_money(now):
    """The jobs that end, renew and bill, in their tick order."""
    for name in ("end_cancelled_subscriptions", "billing_run", "overage_invoices"):
        run_job(name, now=now)


@pytest.fixture
def annual(org):
    return SubscriptionFactory(
        organisation=org,
        billing_cycle=BillingCycle.ANNUAL,
        payment_method_kind=PaymentMethodKind.BANK_TRANSFER,
    )


def cancel(subscription, admin, now):
    return subscription_cancel(
        subscription=subscription, actor=Actor(user=admin), reason="not_using", detail="", now=now
    )


# 1. Months that closed while a cancellation was pending ----------------------------------------


@pytest.mark.parametrize("undo_after", [relativedelta(days=3), relativedelta(months=5, days=3)])
def test_months_closed_while_cancelled_are_billed_when_the_cancellation_is_undone(
    annual, org, admin, undo_after
):
    cancel(annual, admin, PERIOD_START + timedelta(days=2))
    use(org, LIMIT + 2500)  # the first month: 3 units
    use(org, LIMIT + 1, month_start=RENEWAL)  # the second: 1 unit
    assert overage_invoices_issue(now=RENEWAL + relativedelta(months=1, hours=1)) == 0  # held
    undo_at = RENEWAL + undo_after
    subscription_cancel_undo(subscription=annual, actor=Actor(user=admin), now=undo_at)
    second_closed = undo_at >= RENEWAL + relativedelta(months=1)
    assert overage_invoices_issue(now=undo_at) == (2 if second_closed else 1)
    assert overage_invoices_issue(now=undo_at) == 0
    charges = OverageCharge.objects.order_by("month_start")
    assert [c.month_start for c in charges][:1] == [PERIOD_START]
    assert overage_findings(org, undo_at + timedelta(hours=2)) == []


# 2. However late the job comes -----------------------------------------------------------------


@pytest.mark.parametrize(
    "late",
    [
        relativedelta(days=1),
        relativedelta(months=2),
        relativedelta(months=3),
        relativedelta(months=4),
        relativedelta(months=6),
        relativedelta(months=11),
        relativedelta(months=12),
    ],
    ids=["1-day", "2-months", "3-months", "4-months", "6-months", "11-months", "12-months"],
)
def test_a_closed_month_over_the_limit_is_billed_however_late_the_job_runs(annual, org, late):
    use(org, LIMIT + 2500)  # the first usage month, closing at RENEWAL
    now = RENEWAL + late
    renews = now >= annual.current_period_end  # the job came after the term's end too
    assert billing_run_issue(now=now) == (1 if renews else 0)
    assert overage_invoices_issue(now=now) == 1
    assert overage_invoices_issue(now=now) == 0
    [charge] = OverageCharge.objects.all()
    assert (charge.month_start, charge.units, charge.invoice.kind) == (PERIOD_START, 3, "overage")
    assert overage_findings(org, now + timedelta(hours=2)) == []


# 3. The final usage month of a cancelled subscription ------------------------------------------


def test_a_cancelled_monthly_subscription_gets_its_final_months_overage_at_the_end(org, admin):
    subscription = SubscriptionFactory(organisation=org)
    cancel(subscription, admin, PERIOD_START + timedelta(days=2))
    use(org, LIMIT + 1001)  # the final month: 2 units
    end = subscription.current_period_end
    assert overage_findings(org, end - timedelta(minutes=1)) == []  # still open
    tick_money(end + timedelta(minutes=15))
    tick_money(end + timedelta(minutes=30))  # idempotent
    assert Subscription.objects.get(pk=subscription.pk).status == "ended"
    [invoice] = Invoice.objects.filter(subscription=subscription)
    assert (invoice.kind, invoice.subtotal, invoice.period_start, invoice.period_end) == (
        "overage",
        1000,
        PERIOD_START,
        end,
    )
    assert [(line.kind, line.amount) for line in invoice.lines.all()] == [("overage", 1000)]
    assert overage_findings(org, end + timedelta(days=2)) == []


def test_the_ledger_misses_an_ended_subscriptions_unbilled_final_month(org, admin):
    subscription = SubscriptionFactory(organisation=org)
    cancel(subscription, admin, PERIOD_START + timedelta(days=2))
    use(org, LIMIT + 1001)
    end = subscription.current_period_end
    run_job("end_cancelled_subscriptions", now=end + timedelta(minutes=15))
    assert len(overage_findings(org, end + timedelta(hours=2))) == 1
    run_job("overage_invoices", now=end + timedelta(hours=2))
    assert overage_findings(org, end + timedelta(hours=2)) == []


def test_a_cancelled_annual_subscription_gets_its_unbilled_months_at_the_end_of_the_term(
    annual, org, admin
):
    use(org, LIMIT + 1)  # month 1, billed at its close
    overage_invoices_issue(now=RENEWAL)
    cancel(annual, admin, RENEWAL + timedelta(days=2))
    last_month = PERIOD_START + relativedelta(months=11)
    use(org, LIMIT + 2500, month_start=RENEWAL)  # month 2, closes while cancelled
    use(org, LIMIT + 4500, month_start=last_month)  # month 12, the final one
    end = annual.current_period_end
    assert overage_invoices_issue(now=end - timedelta(minutes=1)) == 0
    tick_money(end + timedelta(minutes=15))
    tick_money(end + timedelta(minutes=30))
    assert Subscription.objects.get(pk=annual.pk).status == "ended"
    charges = OverageCharge.objects.order_by("month_start")
    assert [(c.month_start, c.units) for c in charges] == [
        (PERIOD_START, 1),
        (RENEWAL, 3),
        (last_month, 5),
    ]
    assert Invoice.objects.filter(subscription=annual, kind="overage").count() == 3
    assert not Invoice.objects.filter(subscription=annual, kind="subscription").exists()
    assert overage_findings(org, end + timedelta(days=2)) == []


def test_a_downgrade_at_the_renewal_does_not_bill_the_old_terms_months_at_the_new_limit(org):
    """Without a look-back window, months that closed under the old plan's limit must not be
    billed again against a smaller plan's limit after a downgrade."""
    from subscriptions.models import PlanChange
    from tests.subscriptions.factories import plan

    subscription = SubscriptionFactory(
        organisation=org, plan=plan("professional"), billing_cycle=BillingCycle.ANNUAL
    )
    month_11 = PERIOD_START + relativedelta(months=10)
    use(org, 100_000, month_start=month_11)  # under Professional's 250,000
    assert overage_invoices_issue(now=month_11 + relativedelta(months=1)) == 0
    end = subscription.current_period_end
    PlanChange.objects.create(
        subscription=subscription,
        kind=PlanChange.Kind.DOWNGRADE,
        status=PlanChange.Status.SCHEDULED,
        from_plan=plan("professional"),
        to_plan=plan("standard"),
        billing_cycle=BillingCycle.ANNUAL,
        created_at=month_11,
    )
    assert billing_run_issue(now=end) == 1  # the downgrade applies at the renewal
    assert Subscription.objects.get(pk=subscription.pk).plan.code == "standard"
    assert overage_invoices_issue(now=end + timedelta(days=1)) == 0
    assert not OverageCharge.objects.exists()
