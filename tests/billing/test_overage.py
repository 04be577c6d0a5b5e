"""Overage on invoices (billing.invoicing, billing.drafts): monthly and annual plans.

Standard: 50,000 transactions a month, $5.00 per started 1,000 above that. Usage goes straight
into the per-day counters, as the ingestion API leaves it.
"""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.invoicing import billing_run_issue, overage_invoices_issue
from billing.models import Invoice, OverageCharge
from core.jobs import all_jobs, run_job
from subscriptions.models import BillingCycle, PaymentMethodKind
from tests.accounts.factories import OrganisationFactory
from tests.subscriptions.factories import PERIOD_START, SubscriptionFactory
from usage.models import UsageCounter

pytestmark = pytest.mark.django_db

LIMIT = 50_000
RENEWAL = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # PERIOD_START + 1 month


def use(organisation, transactions, *, month_start=PERIOD_START, days=(5, 20)):
    """Spread `transactions` over a few days of the usage month starting at `month_start`."""
    first = month_start.date()
    share, rest = divmod(transactions, len(days))
    for n, offset in enumerate(days):
        UsageCounter.objects.create(
            organisation=organisation,
            month_start=month_start,
            day=first + timedelta(days=offset),
            transactions=share + (rest if n == 0 else 0),
        )


def renewal_invoice(subscription):
    return Invoice.objects.get(subscription=subscription, period_start=RENEWAL)


# Monthly plans: a line on the renewal invoice ------------------------------------------------


@pytest.mark.parametrize(
    ("used", "units"),
    [(LIMIT, 0), (LIMIT + 1, 1), (LIMIT + 1000, 1), (LIMIT + 1001, 2), (LIMIT + 123_456, 124)],
)
def test_renewal_invoice_carries_the_closed_months_overage(org, used, units):
    subscription = SubscriptionFactory(organisation=org)
    use(org, used)
    assert billing_run_issue(now=RENEWAL) == 1
    invoice = renewal_invoice(subscription)
    lines = list(invoice.lines.order_by("position"))
    assert [(line.kind, line.amount) for line in lines[:1]] == [("plan", 29900)]
    overage = 500 * units
    if units == 0:
        assert len(lines) == 1
        assert OverageCharge.objects.count() == 0
    else:
        [_, line] = lines
        thousands = "thousand" if units == 1 else "thousands"
        assert (line.kind, line.quantity, line.unit_amount, line.amount) == (
            "overage",
            units,
            500,
            overage,
        )
        assert line.description == (
            f"Overage: {units:,} started {thousands} above 50,000 transactions "
            "(1 Nov – 1 Dec) × $5.00"
        )
        assert (line.period_start, line.period_end) == (PERIOD_START, RENEWAL)
        [charge] = OverageCharge.objects.all()
        assert (charge.invoice, charge.month_start, charge.month_end) == (
            invoice,
            PERIOD_START,
            RENEWAL,
        )
        assert (charge.transactions, charge.transaction_limit, charge.units, charge.amount) == (
            used,
            LIMIT,
            units,
            overage,
        )
    assert invoice.subtotal == 29900 + overage


def test_tax_applies_to_the_overage_too(org):
    subscription = SubscriptionFactory(organisation=org)
    use(org, LIMIT + 1001)  # 2 units: $10.00
    billing_run_issue(now=RENEWAL)
    invoice = renewal_invoice(subscription)
    # No billing country: the seller's (Ireland, 23 %) on $299.00 + $10.00.
    assert (invoice.subtotal, invoice.tax_rate_bp, invoice.tax_amount, invoice.total) == (
        30900,
        2300,
        7107,
        38007,
    )


def test_the_overage_is_billed_once_however_often_the_run_runs(org):
    subscription = SubscriptionFactory(organisation=org)
    use(org, LIMIT + 1)
    assert billing_run_issue(now=RENEWAL) == 1
    assert billing_run_issue(now=RENEWAL) == 0
    assert billing_run_issue(now=RENEWAL + timedelta(hours=1)) == 0
    assert OverageCharge.objects.count() == 1
    assert Invoice.objects.filter(subscription=subscription).count() == 1
    # The next renewal bills the next month (within the limit here): no second overage line.
    next_renewal = datetime(2027, 1, 1, 9, 0, tzinfo=UTC)
    assert billing_run_issue(now=next_renewal) == 1
    invoice = Invoice.objects.get(subscription=subscription, period_start=next_renewal)
    assert [line.kind for line in invoice.lines.all()] == ["plan"]
    assert OverageCharge.objects.count() == 1


def test_a_month_already_billed_is_not_billed_again(org):
    """The OverageCharge record wins even if a month is ever looked at twice (e.g. replayed)."""
    subscription = SubscriptionFactory(organisation=org)
    use(org, LIMIT + 1)
    billing_run_issue(now=RENEWAL)
    # Put the subscription back one period, as if the run had to redo it.
    Invoice.objects.filter(subscription=subscription).update(period_start=PERIOD_START)
    subscription.refresh_from_db()
    subscription.period_index = 0
    subscription.current_period_start = PERIOD_START
    subscription.current_period_end = RENEWAL
    subscription.save()
    Invoice.objects.filter(subscription=subscription).update(kind="upgrade")  # out of the way
    assert billing_run_issue(now=RENEWAL) == 1
    invoice = Invoice.objects.get(subscription=subscription, kind="subscription")
    assert [line.kind for line in invoice.lines.all()] == ["plan"]
    assert OverageCharge.objects.count() == 1


def test_the_batch_reads_usage_in_one_query_whatever_its_size(db):
    def run(count: int) -> int:
        subscriptions = [
            SubscriptionFactory(organisation=OrganisationFactory()) for _ in range(count)
        ]
        for subscription in subscriptions:
            use(subscription.organisation, LIMIT + 1)
        with CaptureQueriesContext(connection) as queries:
            assert billing_run_issue(now=RENEWAL) == count
        return sum("usage_usagecounter" in q["sql"] for q in queries.captured_queries), len(
            queries.captured_queries
        )

    small = run(2)
    large = run(6)
    assert small == large
    assert small[0] == 1


def test_usage_of_other_organisations_and_months_does_not_count(org, other_org):
    subscription = SubscriptionFactory(organisation=org)
    SubscriptionFactory(organisation=other_org)
    use(org, LIMIT)
    use(other_org, LIMIT + 5000)
    use(org, 9000, month_start=RENEWAL)  # the next usage month, still open
    billing_run_issue(now=RENEWAL)
    assert [line.kind for line in renewal_invoice(subscription).lines.all()] == ["plan"]
    [charge] = OverageCharge.objects.all()
    assert (charge.organisation, charge.units) == (other_org, 5)


# Annual plans: an overage-only invoice at the close of each usage month ----------------------


@pytest.fixture
def annual(org):
    return SubscriptionFactory(
        organisation=org,
        billing_cycle=BillingCycle.ANNUAL,
        payment_method_kind=PaymentMethodKind.BANK_TRANSFER,
    )


def test_annual_overage_invoice_at_the_close_of_a_month_over_the_limit(annual, org):
    use(org, LIMIT + 2500)  # November: 3 units
    use(org, LIMIT, month_start=RENEWAL)  # December: at the limit
    assert overage_invoices_issue(now=RENEWAL - timedelta(minutes=1)) == 0  # still open
    assert run_job("overage_invoices", now=RENEWAL) == "1 overage invoice(s) issued"
    [invoice] = Invoice.objects.filter(kind="overage")
    assert (invoice.subscription, invoice.status, invoice.currency) == (annual, "open", "USD")
    assert (invoice.period_start, invoice.period_end, invoice.billing_cycle) == (
        PERIOD_START,
        RENEWAL,
        "annual",
    )
    assert (invoice.subtotal, invoice.tax_amount, invoice.total) == (1500, 345, 1845)
    # Bank transfer: due in the payment terms, like the period invoices.
    assert (invoice.payment_method_kind, invoice.due_at) == (
        "bank_transfer",
        RENEWAL + timedelta(days=30),
    )
    [line] = invoice.lines.all()
    assert (line.kind, line.quantity, line.unit_amount, line.amount, line.description) == (
        "overage",
        3,
        500,
        1500,
        "Overage: 3 started thousands above 50,000 transactions (1 Nov – 1 Dec) × $5.00",
    )
    [charge] = OverageCharge.objects.all()
    assert (charge.invoice, charge.month_start, charge.units) == (invoice, PERIOD_START, 3)
    # Never twice; December (at the limit) gets nothing when it closes.
    assert overage_invoices_issue(now=RENEWAL) == 0
    assert overage_invoices_issue(now=datetime(2027, 1, 1, 9, 0, tzinfo=UTC)) == 0
    assert Invoice.objects.filter(kind="overage").count() == 1


def test_annual_overage_each_month_over_the_limit_once(annual, org):
    january = datetime(2027, 1, 1, 9, 0, tzinfo=UTC)
    use(org, LIMIT + 1)
    use(org, LIMIT + 1001, month_start=RENEWAL)
    assert overage_invoices_issue(now=january + timedelta(hours=2)) == 2  # the job was late
    assert overage_invoices_issue(now=january + timedelta(hours=2)) == 0
    invoices = Invoice.objects.filter(kind="overage").order_by("period_start")
    assert [(i.period_start, i.subtotal) for i in invoices] == [
        (PERIOD_START, 500),
        (RENEWAL, 1000),
    ]
    # Gapless numbers continue across the overage invoices.
    assert sorted(i.number for i in invoices) == ["INV-2027-000001", "INV-2027-000002"]


def test_annual_plan_renewal_and_billing_run_carry_no_overage_line(org):
    """Annual plans get overage-only invoices; the annual period invoice stays the plan only."""
    subscription = SubscriptionFactory(organisation=org, billing_cycle=BillingCycle.ANNUAL)
    use(org, LIMIT + 1)
    assert billing_run_issue(now=RENEWAL) == 0  # the annual period runs to November 2027
    assert overage_invoices_issue(now=RENEWAL) == 1
    assert Invoice.objects.get(kind="overage").subscription == subscription


def test_cancelled_annual_subscription_gets_no_overage_invoice(annual, org):
    annual.cancel_at_period_end = True
    annual.save(update_fields=["cancel_at_period_end"])
    use(org, LIMIT + 1)
    assert overage_invoices_issue(now=RENEWAL) == 0


def test_overage_job_runs_between_the_billing_run_and_the_pdfs():
    names = [job.name for job in all_jobs()]
    assert names.index("billing_run") < names.index("overage_invoices")
    assert names.index("overage_invoices") < names.index("render_invoice_pdfs")
    assert names.index("overage_invoices") < names.index("charge_open_invoices")


def test_annual_card_overage_invoice_is_charged_by_the_charge_job(localstripe, org, admin):
    from billing.payments import invoices_charge_due
    from tests.billing.helpers import START, subscribe

    subscribe(org, plan="standard", cycle="annual", now=START)
    use(org, LIMIT + 10, month_start=START)
    month_end = datetime(2026, 2, 28, 10, 0, tzinfo=UTC)  # Jan 31 + 1 month, clamped
    assert overage_invoices_issue(now=month_end) == 1
    assert invoices_charge_due(now=month_end) == 1
    invoice = Invoice.objects.get(kind="overage")
    assert (invoice.status, invoice.total, invoice.amount_paid) == ("paid", 615, 615)


def test_switch_to_annual_bills_the_last_monthly_month_on_the_first_annual_invoice(org):
    subscription = SubscriptionFactory(organisation=org, scheduled_billing_cycle="annual")
    use(org, LIMIT + 1)
    assert billing_run_issue(now=RENEWAL) == 1
    invoice = renewal_invoice(subscription)
    assert invoice.billing_cycle == "annual"
    assert [(line.kind, line.amount) for line in invoice.lines.all()] == [
        ("plan", 297800),
        ("overage", 500),
    ]
    # The annual job does not bill that month again.
    assert overage_invoices_issue(now=RENEWAL + timedelta(days=40)) == 0
    assert OverageCharge.objects.count() == 1
