"""The upcoming invoice (billing/upcoming.py): the billing run as a dry run.

With nothing changed in between, the preview taken a minute before the renewal is the invoice
the billing run issues, line by line and cent by cent.
"""

import re
from datetime import UTC, datetime, timedelta

import pytest
from dateutil.relativedelta import relativedelta
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.audit import Actor
from billing.balance import balance_adjust
from billing.invoicing import billing_run_issue, overage_invoices_issue
from billing.models import (
    BalanceEntry,
    BillingProfile,
    CarriedCharge,
    Invoice,
    InvoiceSequence,
    OverageCharge,
)
from billing.upcoming import upcoming_invoices
from subscriptions.models import BillingCycle, Plan, PlanChange, Subscription
from subscriptions.plan_changes import downgrade_schedule
from subscriptions.selectors import subscription_for_settings
from tests.subscriptions.factories import PERIOD_START, SubscriptionFactory
from usage.models import UsageCounter
from usage.selectors import usage_summary

pytestmark = pytest.mark.django_db

RENEWAL = PERIOD_START + relativedelta(months=1)  # 1 Dec 2026 09:00 UTC
MINUTE_BEFORE = RENEWAL - timedelta(minutes=1)
INVOICE_FIELDS = (
    "kind",
    "currency",
    "subtotal",
    "tax_amount",
    "total",
    "tax_rule",
    "tax_rate_bp",
    "tax_name",
    "tax_note",
    "plan_name",
    "billing_cycle",
    "period_start",
    "period_end",
    "billing_details",
    "payment_method_kind",
    "issued_at",
    "due_at",
    "credit_applied",
    "amount_due",
)
LINE_FIELDS = (
    "position",
    "kind",
    "description",
    "quantity",
    "unit_amount",
    "amount",
    "period_start",
    "period_end",
)


def use(organisation, transactions, *, month_start=PERIOD_START, day=5):
    UsageCounter.objects.create(
        organisation=organisation,
        month_start=month_start,
        day=(month_start + timedelta(days=day)).date(),
        transactions=transactions,
    )


def figures(invoice, lines) -> dict:
    return {
        "invoice": {name: getattr(invoice, name) for name in INVOICE_FIELDS},
        "lines": [{name: getattr(line, name) for name in LINE_FIELDS} for line in lines],
    }


def preview_figures(upcoming) -> dict:
    found = figures(upcoming.invoice, upcoming.lines)
    found["credits"] = [(c.description, c.amount) for c in upcoming.credits]
    return found


def issued_figures(invoice) -> dict:
    found = figures(invoice, invoice.lines.order_by("position"))
    found["credits"] = [
        (e.description, e.amount)
        for e in invoice.balance_entries.filter(kind=BalanceEntry.Kind.APPLIED).order_by("pk")
    ]
    return found


def nothing_written(before: dict) -> None:
    assert snapshot() == before


def snapshot() -> dict:
    return {
        "invoices": Invoice.objects.count(),
        "sequence": list(InvoiceSequence.objects.values_list("year", "last_number")),
        "balance": list(BalanceEntry.objects.values_list("pk", "remaining")),
        "changes": list(PlanChange.objects.values_list("pk", "status")),
        "periods": list(
            Subscription.objects.values_list("pk", "current_period_end", "plan_id", "billing_cycle")
        ),
        "overage": OverageCharge.objects.count(),
        "carried": list(CarriedCharge.objects.values_list("pk", "line_id")),
    }


def assert_preview_is_the_renewal(org, subscription):
    before = snapshot()
    upcoming = upcoming_invoices(organisation=org, now=MINUTE_BEFORE)
    nothing_written(before)
    renewal = upcoming.invoices[-1]
    assert renewal.issue_at == subscription.current_period_end
    assert billing_run_issue(now=renewal.issue_at) == 1
    issued = Invoice.objects.get(subscription=subscription, period_start=renewal.issue_at)
    assert preview_figures(renewal) == issued_figures(issued)
    return renewal, issued


def test_monthly(org):
    subscription = SubscriptionFactory(organisation=org)
    renewal, issued = assert_preview_is_the_renewal(org, subscription)
    assert [line.amount for line in renewal.lines] == [29900]
    assert issued.subtotal == 29900


def test_monthly_with_overage_so_far(org):
    subscription = SubscriptionFactory(organisation=org)
    use(org, 50_000 + 12_345)
    renewal, issued = assert_preview_is_the_renewal(org, subscription)
    assert [(line.kind, line.amount) for line in renewal.lines] == [
        ("plan", 29900),
        ("overage", 13 * 500),
    ]
    assert renewal.open_month


def test_annual(org):
    subscription = SubscriptionFactory(
        organisation=org,
        billing_cycle=BillingCycle.ANNUAL,
        anchor_at=PERIOD_START - relativedelta(years=1) + relativedelta(months=1),
    )
    renewal, issued = assert_preview_is_the_renewal(org, subscription)
    assert issued.billing_cycle == "annual"
    assert renewal.lines[0].amount == subscription.current_price


def test_switch_to_annual_at_the_renewal(org):
    subscription = SubscriptionFactory(organisation=org)
    Subscription.objects.filter(pk=subscription.pk).update(scheduled_billing_cycle="annual")
    renewal, issued = assert_preview_is_the_renewal(org, subscription)
    assert (issued.billing_cycle, issued.period_end) == ("annual", RENEWAL + relativedelta(years=1))


def downgrade_to_standard(subscription, admin):
    downgrade_schedule(
        subscription=subscription,
        actor=Actor(user=admin),
        plan=Plan.objects.get(code="standard"),
        keep_flow_ids=None,
        now=PERIOD_START + timedelta(days=3),
    )


def test_after_a_scheduled_downgrade(org, admin):
    subscription = SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="professional"))
    downgrade_to_standard(subscription, admin)
    use(org, 3_000)
    renewal, issued = assert_preview_is_the_renewal(org, subscription)
    assert issued.plan_name == "Standard"
    assert renewal.lines[0].description == "Standard plan, monthly subscription"


def test_a_price_change_applies_from_the_renewal(org):
    subscription = SubscriptionFactory(organisation=org)
    Plan.objects.get(code="standard").prices.filter(currency="USD").update(monthly_amount=31900)
    renewal, _ = assert_preview_is_the_renewal(org, subscription)
    assert renewal.lines[0].amount == 31900


def test_with_a_credit_balance(org, ops):
    subscription = SubscriptionFactory(organisation=org)
    balance_adjust(
        organisation=org,
        currency="USD",
        amount=10_000,
        actor=Actor(user=ops),
        reason="Goodwill for the outage",
        now=PERIOD_START + timedelta(days=2),
    )
    renewal, issued = assert_preview_is_the_renewal(org, subscription)
    assert (renewal.invoice.credit_applied, renewal.invoice.amount_due) == (
        10_000,
        renewal.invoice.total - 10_000,
    )
    assert issued.credit_applied == 10_000


def test_with_reverse_charge_tax(org):
    subscription = SubscriptionFactory(organisation=org)
    BillingProfile.objects.update_or_create(
        organisation=org, defaults={"country": "DE", "vat_number": "DE136695976"}
    )
    use(org, 60_001)
    renewal, issued = assert_preview_is_the_renewal(org, subscription)
    assert (issued.tax_rule, issued.tax_amount) == ("reverse_charge", 0)
    assert "Article 196" in renewal.invoice.tax_note


def test_with_standard_tax(org):
    subscription = SubscriptionFactory(organisation=org)
    BillingProfile.objects.update_or_create(organisation=org, defaults={"country": "IE"})
    use(org, 51_000)
    renewal, issued = assert_preview_is_the_renewal(org, subscription)
    assert renewal.invoice.tax_amount > 0
    assert issued.tax_amount == renewal.invoice.tax_amount


def test_with_a_carried_upgrade_amount(org):
    subscription = SubscriptionFactory(organisation=org)
    CarriedCharge.objects.create(
        organisation=org,
        subscription=subscription,
        kind=CarriedCharge.Kind.UPGRADE,
        description="Upgrade to Premium, 30 Nov – 1 Dec",
        amount=34,
        currency="USD",
        period_start=RENEWAL - timedelta(days=1),
        period_end=RENEWAL,
        created_at=RENEWAL - timedelta(days=1),
    )
    renewal, issued = assert_preview_is_the_renewal(org, subscription)
    assert [line.amount for line in renewal.lines] == [29900, 34]


def test_annual_overage_invoice_at_the_months_close(org):
    subscription = SubscriptionFactory(
        organisation=org,
        billing_cycle=BillingCycle.ANNUAL,
        anchor_at=PERIOD_START - relativedelta(months=2),
    )
    use(org, 50_000 + 2_500)
    before = snapshot()
    upcoming = upcoming_invoices(organisation=org, now=MINUTE_BEFORE)
    nothing_written(before)
    overage, renewal = upcoming.invoices
    assert (overage.invoice.kind, overage.issue_at, overage.open_month) == (
        "overage",
        RENEWAL,
        True,
    )
    assert renewal.issue_at == subscription.current_period_end
    assert overage_invoices_issue(now=RENEWAL) == 1
    issued = Invoice.objects.get(subscription=subscription, kind="overage")
    assert preview_figures(overage) == issued_figures(issued)


def test_a_cancelled_subscription_has_no_further_invoices(org):
    SubscriptionFactory(organisation=org, cancel_at_period_end=True)
    upcoming = upcoming_invoices(organisation=org, now=MINUTE_BEFORE)
    assert (upcoming.invoices, upcoming.no_renewal) == ([], "cancelled")


def test_a_cancelled_subscription_shows_its_final_overage_invoice(org):
    subscription = SubscriptionFactory(organisation=org, cancel_at_period_end=True)
    use(org, 50_001)
    [final] = upcoming_invoices(organisation=org, now=MINUTE_BEFORE).invoices
    assert (final.invoice.kind, final.issue_at, final.invoice.subtotal) == (
        "overage",
        RENEWAL,
        500,
    )
    assert final.final
    Subscription.objects.filter(pk=subscription.pk).update(
        status=Subscription.Status.ENDED, ended_at=RENEWAL
    )
    assert overage_invoices_issue(now=RENEWAL) == 1
    issued = Invoice.objects.get(subscription=subscription, kind="overage")
    assert preview_figures(final) == issued_figures(issued)


@pytest.mark.parametrize("status", ["incomplete", "ended", "suspended"])
def test_no_renewal_while(org, status):
    SubscriptionFactory(organisation=org, status=status)
    upcoming = upcoming_invoices(organisation=org, now=MINUTE_BEFORE)
    assert (upcoming.invoices, upcoming.no_renewal) == ([], status)


def test_no_subscription(org):
    assert upcoming_invoices(organisation=org, now=MINUTE_BEFORE).no_renewal == "none"


def test_the_projection_and_its_overage(org):
    SubscriptionFactory(organisation=org)
    # 7 full days of 2,000 before 20 Nov, then 11 days left: about 22,000 more.
    for day in range(12, 19 + 1):
        use(org, 2_000, day=day - 1)
    now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    upcoming = upcoming_invoices(organisation=org, now=now)
    assert upcoming.projection.projected == 16_000 + 2_000 * 11
    assert upcoming.projected_overage is None
    use(org, 40_000, day=10)
    upcoming = upcoming_invoices(organisation=org, now=now)
    assert upcoming.projection.projected == 56_000 + 2_000 * 11
    assert (upcoming.projected_overage.units, upcoming.projected_overage.amount) == (28, 14_000)
    # The invoice itself bills only what was used: 6,000 above the limit so far.
    assert [line.amount for line in upcoming.next.lines] == [29900, 3_000]


def test_another_organisations_figures_never_count(org, other_org):
    SubscriptionFactory(organisation=org)
    SubscriptionFactory(organisation=other_org)
    use(other_org, 90_000)
    balance_entry = BalanceEntry.objects.create(
        organisation=other_org,
        currency="USD",
        kind=BalanceEntry.Kind.ADJUSTMENT,
        amount=5_000,
        remaining=5_000,
        description="Adjustment by our team",
        created_at=PERIOD_START,
    )
    upcoming = upcoming_invoices(organisation=org, now=MINUTE_BEFORE)
    assert [line.amount for line in upcoming.next.lines] == [29900]
    assert upcoming.next.credits == []
    assert balance_entry.remaining == 5_000


def test_a_constant_number_of_queries(org, admin):
    subscription = SubscriptionFactory(organisation=org)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            upcoming_invoices(organisation=org, now=MINUTE_BEFORE)
        return len(queries)

    def carry(n):
        CarriedCharge.objects.create(
            organisation=org,
            subscription=subscription,
            kind=CarriedCharge.Kind.UPGRADE,
            description=f"Upgrade {n}",
            amount=20,
            currency="USD",
            period_start=PERIOD_START,
            period_end=RENEWAL,
            created_at=PERIOD_START,
        )

    use(org, 60_000, day=1)
    carry(0)
    few = count()
    for day in range(2, 25):
        use(org, 3_000, day=day)
    for n in range(1, 4):
        carry(n)
    assert count() == few


# On Settings > Subscription ------------------------------------------------------------------


def section(client, org) -> str:
    response = client.get(reverse("subscriptions:settings", args=[org.slug]))
    assert response.status_code == 200
    body = response.content.decode()
    start = body.index('<section class="card upcoming"')
    return " ".join(re.sub(r"<[^>]+>", " ", body[start : body.index("</section>", start)]).split())


@pytest.mark.parametrize("role", ["admin", "billing_user"])
def test_the_subscription_page_shows_the_next_invoice(request, client_for, org, role, time_machine):
    time_machine.move_to(MINUTE_BEFORE, tick=False)
    SubscriptionFactory(organisation=org)
    BillingProfile.objects.update_or_create(organisation=org, defaults={"country": "IE"})
    use(org, 51_500)
    text = section(client_for(request.getfixturevalue(role)), org)
    assert "Renewal invoice on 1 December 2026" in text
    assert "Standard plan, monthly subscription $299.00" in text
    assert "× $5.00 (so far: this usage month is still open) $10.00" in text
    assert "Subtotal $309.00 VAT 23% $71.07 Total $380.07" in text


def test_the_subscription_page_after_a_cancellation(client_for, org, admin, time_machine):
    time_machine.move_to(MINUTE_BEFORE, tick=False)
    SubscriptionFactory(organisation=org, cancel_at_period_end=True)
    assert "No further invoices. Your subscription is cancelled" in section(client_for(admin), org)


def test_the_projected_overage_is_shown_before_tax(client_for, org, admin, time_machine):
    now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    time_machine.move_to(now, tick=False)
    SubscriptionFactory(organisation=org)
    for day in range(11, 19):
        use(org, 6_000, day=day)  # 48,000 so far, 6,000 a day for 11 more days
    text = section(client_for(admin), org)
    assert "this usage month ends at about 114,000 transactions" in text
    assert "an overage of about $320.00 (64 started thousands above the limit), before tax" in text


def test_the_page_keeps_its_query_count_with_the_upcoming_invoice(
    client_for, org, admin, time_machine
):
    time_machine.move_to(MINUTE_BEFORE, tick=False)
    subscription = SubscriptionFactory(organisation=org)
    client = client_for(admin)
    use(org, 60_000, day=1)
    url = reverse("subscriptions:settings", args=[org.slug])
    client.get(url)
    with CaptureQueriesContext(connection) as few:
        client.get(url)
    for day in range(2, 28):
        use(org, 1_000, day=day)
    for n in range(4):
        CarriedCharge.objects.create(
            organisation=org,
            subscription=subscription,
            kind=CarriedCharge.Kind.UPGRADE,
            description=f"Upgrade {n}",
            amount=20,
            currency="USD",
            period_start=PERIOD_START,
            period_end=RENEWAL,
            created_at=PERIOD_START,
        )
    with CaptureQueriesContext(connection) as many:
        client.get(url)
    assert len(many) == len(few)


# What the page already read is not read again -------------------------------------------------


def page_inputs(org, now):
    """The subscription and the Usage section's figures as Settings > Subscription reads them."""
    subscription = subscription_for_settings(organisation=org)
    subscription.organisation = org
    return subscription, usage_summary(subscription=subscription, now=now)


@pytest.mark.parametrize(
    ("scenario", "now"),
    [
        ("monthly, overage so far", MINUTE_BEFORE),
        ("monthly, projection", datetime(2026, 11, 20, 9, 0, tzinfo=UTC)),
        ("scheduled downgrade", MINUTE_BEFORE),
        ("annual, overage invoice", datetime(2026, 11, 20, 9, 0, tzinfo=UTC)),
        ("cancelled, final overage", MINUTE_BEFORE),
    ],
)
def test_with_what_the_page_read_the_figures_are_the_same(org, admin, scenario, now):
    plan = Plan.objects.get(code="professional" if "downgrade" in scenario else "standard")
    subscription = SubscriptionFactory(
        organisation=org,
        plan=plan,
        billing_cycle=BillingCycle.ANNUAL if "annual" in scenario else BillingCycle.MONTHLY,
        cancel_at_period_end="cancelled" in scenario,
    )
    BillingProfile.objects.update_or_create(organisation=org, defaults={"country": "IE"})
    if "downgrade" in scenario:
        downgrade_to_standard(subscription, admin)
    for day in range(1, 19):
        use(org, 4_000, day=day)  # 72,000: over the Standard plan's 50,000
    fresh = upcoming_invoices(organisation=org, now=now)
    page_subscription, usage = page_inputs(org, now)
    before = snapshot()
    with CaptureQueriesContext(connection) as queries:
        reused = upcoming_invoices(
            organisation=org, now=now, subscription=page_subscription, usage=usage
        )
    nothing_written(before)
    assert reused.invoices
    assert [preview_figures(u) for u in reused.invoices] == [
        preview_figures(u) for u in fresh.invoices
    ]
    assert [(u.issue_at, u.open_month) for u in reused.invoices] == [
        (u.issue_at, u.open_month) for u in fresh.invoices
    ]
    assert (reused.no_renewal, reused.projection, reused.projected_overage) == (
        fresh.no_renewal,
        fresh.projection,
        fresh.projected_overage,
    )
    # Neither the subscription nor this month's counters are read again.
    sql = " ".join(q["sql"] for q in queries.captured_queries)
    assert "subscriptions_subscription" not in sql
    assert "usage_usagecounter" not in sql
    # The page's subscription is not moved to its next period by the dry run.
    assert page_subscription.plan == plan
    assert page_subscription.current_period_end == subscription.current_period_end
    assert all(c.status == PlanChange.Status.SCHEDULED for c in page_subscription.scheduled_changes)


def test_figures_as_of_another_instant_are_read_again(org):
    SubscriptionFactory(organisation=org)
    use(org, 60_000)
    page_subscription, usage = page_inputs(org, MINUTE_BEFORE - timedelta(days=1))
    use(org, 1_000, day=6)  # counted after the Usage section's figures
    with CaptureQueriesContext(connection) as queries:
        upcoming = upcoming_invoices(
            organisation=org, now=MINUTE_BEFORE, subscription=page_subscription, usage=usage
        )
    assert sum("usage_usagecounter" in q["sql"] for q in queries.captured_queries) == 2
    assert upcoming.projection.used == 61_000


def test_the_page_after_a_scheduled_downgrade(client_for, org, admin, time_machine):
    time_machine.move_to(MINUTE_BEFORE, tick=False)
    subscription = SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="professional"))
    downgrade_to_standard(subscription, admin)
    client = client_for(admin)
    url = reverse("subscriptions:settings", args=[org.slug])
    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        body = client.get(url).content.decode()
    sql = [q["sql"] for q in queries.captured_queries]  # before the next request resets the log
    # The page shows the plan as it is, the upcoming invoice the plan the renewal applies.
    assert "<dd><strong>Professional</strong>" in body
    assert "Your plan changes to Standard on" in body
    assert "Standard plan, monthly subscription" in section(client, org)
    assert sum('FROM "subscriptions_subscription"' in s for s in sql) == 1
    assert sum('FROM "subscriptions_planchange"' in s for s in sql) == 1
    assert sum("usage_usagecounter" in s for s in sql) == 1
    assert PlanChange.objects.get().status == PlanChange.Status.SCHEDULED
