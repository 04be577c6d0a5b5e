"""The ops dashboard's charts of the last 12 months: every figure against values worked out by
hand from data placed at fixed instants, per currency; the page draws them accessibly; and it
costs the same number of queries at 1 and at 10,000 organisations."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Organisation
from billing.models import CreditNote, DunningCase, DunningStep, Invoice, InvoiceLine, Payment
from portal import ops_figures
from portal.dashboard import ops_dashboard
from portal.ops_charts import ops_charts
from subscriptions.models import Plan, Subscription
from support import staff
from tests.accounts.factories import OrganisationFactory, UserFactory
from tests.billing.factories import issued_invoice, plan_line
from tests.subscriptions.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def at(month, day=1, hour=0, year=2026):
    return datetime(year, month, day, hour, tzinfo=UTC)


def subscription(currency="EUR", cycle="monthly", **fields):
    return SubscriptionFactory(
        organisation=OrganisationFactory(), currency=currency, billing_cycle=cycle, **fields
    )


def period_invoice(sub, *, price, start, end, status="paid", starts_term=False, issued_at=None):
    """A period invoice with its plan line (23% tax, as issued_invoice makes it)."""
    return issued_invoice(
        organisation=sub.organisation,
        subscription=sub,
        currency=sub.currency,
        billing_cycle=sub.billing_cycle,
        lines=[plan_line(unit_amount=price, period_start=start, period_end=end)],
        status=status,
        period_start=start,
        period_end=end,
        issued_at=issued_at or start,
        starts_term=starts_term,
    )


def paid(invoice, *, on, attempt=1, status="succeeded"):
    return Payment.objects.create(
        organisation=invoice.organisation,
        invoice=invoice,
        method_kind="card",
        attempt=attempt,
        amount=invoice.total,
        currency=invoice.currency,
        status=status,
        idempotency_key=f"pay-{invoice.number}-{attempt}",
        created_at=on - timedelta(minutes=5),
        completed_at=on,
    )


def credit_note(invoice, *, total_net, on, number):
    tax = total_net * 23 // 100
    return CreditNote.objects.create(
        organisation=invoice.organisation,
        invoice=invoice,
        number=number,
        reason="goodwill",
        outcome="balance",
        currency=invoice.currency,
        subtotal=total_net,
        tax_amount=tax,
        total=total_net + tax,
        issued_at=on,
    )


@pytest.fixture
def world():
    """Known data in EUR and USD across the twelve months Dec 2025 - Nov 2026."""
    # A: monthly EUR 100.00, periods Sep, Oct, Nov (Nov still open: it counts).
    a = subscription()
    a_sep = period_invoice(a, price=10_000, start=at(9), end=at(10), starts_term=True)
    a_oct = period_invoice(a, price=10_000, start=at(10), end=at(11))
    period_invoice(a, price=10_000, start=at(11), end=at(12), status="open")
    paid(a_sep, on=at(9, 1, 1))
    paid(a_oct, on=at(10, 17))  # after a failed payment, paid on day 16 (below)
    # B: annual EUR 1,200.07 from 15 Mar 2026: one twelfth is 100.0058..., 100.01.
    b = subscription(cycle="annual")
    b_year = period_invoice(b, price=120_007, start=at(3, 15), end=at(3, 15, year=2027))
    b_year.status = "paid"
    paid(b_year, on=at(3, 15, 2))
    # C: a checkout never paid (incomplete, first invoice open): no MRR, not new.
    c = subscription(status=Subscription.Status.INCOMPLETE)
    period_invoice(c, price=10_000, start=at(11, 5), end=at(12, 5), status="open", starts_term=True)
    # D: June period paid, but the subscription ended early, on 20 June: no MRR in June.
    d = subscription(
        status=Subscription.Status.ENDED,
        ended_at=at(6, 20),
        canceled_at=at(6, 5),
        cancellation_reason="",
    )
    period_invoice(d, price=10_000, start=at(6), end=at(7))
    # E: cancelled in July, ended at its period's end (1 Aug): its July still counts.
    e = subscription(
        status=Subscription.Status.ENDED,
        ended_at=at(8),
        canceled_at=at(7, 10),
        cancellation_reason="too_expensive",
    )
    period_invoice(e, price=20_000, start=at(7), end=at(8))
    # F: a void invoice counts nowhere.
    f = subscription()
    period_invoice(f, price=50_000, start=at(10), end=at(11), status="void", starts_term=True)
    period_invoice(f, price=50_000, start=at(11), end=at(12), status="void")
    # G: USD, monthly 50.00, started in November, paid.
    g = subscription(currency="USD")
    g_nov = period_invoice(g, price=5_000, start=at(11, 2), end=at(12, 2), starts_term=True)
    paid(g_nov, on=at(11, 2, 1))
    # H: USD, cancelled in November for switching (its period invoice is not ours to count).
    subscription(currency="USD", canceled_at=at(11, 3), cancellation_reason="switching")

    # A's October payment failed first: case opened 1 Oct, suspended day 14, paid up 17 Oct.
    a_case = DunningCase.objects.create(
        organisation=a.organisation,
        subscription=a,
        status="resolved",
        started_at=at(10, 1, 1),
        closed_at=at(10, 17),
    )
    DunningStep.objects.create(case=a_case, step="day_0", ran_at=at(10, 1, 1), result="declined")
    DunningStep.objects.create(
        case=a_case, step="day_14", ran_at=at(10, 15, 1), result="account suspended"
    )
    # B: an overage invoice unpaid since August, written off on 2 Sep (which closed its case:
    # not a recovery); a later case whose day 14 is still running counts no suspension.
    b_overage = issued_invoice(
        organisation=b.organisation,
        subscription=b,
        kind="overage",
        currency="EUR",
        lines=[{"kind": "overage", "unit_amount": 3_000}],
        status="uncollectible",
        issued_at=at(8, 1),
        closed_at=at(9, 2),
    )
    DunningCase.objects.create(
        organisation=b.organisation,
        subscription=b,
        status="resolved",
        started_at=at(8, 10),
        closed_at=b_overage.closed_at,
    )
    b_case = DunningCase.objects.create(
        organisation=b.organisation, subscription=b, status="open", started_at=at(11, 1)
    )
    DunningStep.objects.create(case=b_case, step="day_14", ran_at=at(11, 15), result="running")
    # Credit notes: 20.00 net on A's September invoice in October; 5.00 net on G's in November.
    credit_note(a_sep, total_net=2_000, on=at(10, 3), number="CN-2026-000001")
    credit_note(g_nov, total_net=500, on=at(11, 4), number="CN-2026-000002")
    # Something outside the twelve months (November 2025) shows nowhere.
    old = subscription()
    period_invoice(old, price=9_900, start=at(11, year=2025), end=at(12, year=2025))


MONTHS = ["Dec 2025"] + [
    f"{m} 2026"
    for m in ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov")
]


def by_month(**values) -> list[int]:
    """{"Sep": 3} -> twelve values, Dec 2025 first, 0 where not given."""
    return [values.get(label[:3], 0) if label != "Dec 2025" else 0 for label in MONTHS]


def test_the_months_are_the_last_twelve_calendar_months_in_utc():
    months = ops_figures.last_months(now=NOW)
    assert [m.label for m in months] == MONTHS
    assert months[0].start == at(12, year=2025)
    assert months[-1].end == at(12)
    assert [m.is_current for m in months] == [False] * 11 + [True]
    # Across New Year.
    january = ops_figures.last_months(now=datetime(2027, 1, 3, tzinfo=UTC))
    assert [m.label for m in january][-3:] == ["Nov 2026", "Dec 2026", "Jan 2027"]


def test_mrr_counts_each_running_period_annual_as_one_twelfth(world):
    figures = ops_figures.mrr(months=ops_figures.last_months(now=NOW), now=NOW)
    annual = 10_001  # 120,007 / 12 = 10,000.58, half up
    assert figures == {
        "EUR": {
            "mrr": by_month(
                Mar=annual,
                Apr=annual,
                May=annual,
                Jun=annual,  # D ended on 20 June: not counted at June's end
                Jul=annual + 20_000,  # E ends at 1 Aug, the last instant of July
                Aug=annual,
                Sep=annual + 10_000,
                Oct=annual + 10_000,
                Nov=annual + 10_000,  # A's November is owed, C is only a checkout
            )
        },
        "USD": {"mrr": by_month(Nov=5_000)},
    }


def test_invoiced_collected_and_credited_per_month(world):
    figures = ops_figures.money(months=ops_figures.last_months(now=NOW), now=NOW)
    # Totals with 23% tax: 100.00 -> 123.00, 1,200.07 -> 1,476.09, 200.00 -> 246.00,
    # 30.00 -> 36.90, 50.00 -> 61.50; credit notes 20.00 -> 24.60 and 5.00 -> 6.15.
    assert figures == {
        "EUR": {
            "invoiced": by_month(
                Mar=147_609,
                Jun=12_300,
                Jul=24_600,
                Aug=3_690,
                Sep=12_300,
                Oct=12_300,
                Nov=12_300 + 12_300,  # A's November and C's checkout invoice (both issued)
            ),
            "collected": by_month(Mar=147_609, Sep=12_300, Oct=12_300),
            "credited": by_month(Oct=2_460),
        },
        "USD": {
            "invoiced": by_month(Nov=6_150),
            "collected": by_month(Nov=6_150),
            "credited": by_month(Nov=615),
        },
    }


def test_failed_payments_opened_recovered_suspended_written_off(world):
    figures = ops_figures.failed_payments(months=ops_figures.last_months(now=NOW), now=NOW)
    assert figures == {
        "EUR": {
            "opened": by_month(Aug=1, Oct=1, Nov=1),
            "recovered": by_month(Oct=1),  # B's August case closed by the write-off: not
            "suspended": by_month(Oct=1),  # B's November day 14 is still running: not
            "written_off": by_month(Sep=1),
        }
    }


def test_cancellations_by_reason_and_new_subscriptions(world):
    months = ops_figures.last_months(now=NOW)
    cancellations = ops_figures.cancellations(months=months, now=NOW)
    nothing = by_month()
    reasons = ops_figures.CANCELLATION_SERIES
    assert cancellations == {
        "EUR": {
            **dict.fromkeys(reasons, nothing),
            "too_expensive": by_month(Jul=1),
            "other": by_month(Jun=1),  # no reason given
        },
        "USD": {**dict.fromkeys(reasons, nothing), "switching": by_month(Nov=1)},
    }
    # A (September) and G (November); C is a checkout not paid, F's first invoice is void.
    assert ops_figures.new_subscriptions(months=months, now=NOW) == {
        "EUR": {"new": by_month(Sep=1)},
        "USD": {"new": by_month(Nov=1)},
    }


def test_this_months_figures_count_as_the_charts_do(world):
    issued, collected = ops_dashboard(now=NOW)["month"]
    # A's November and C's checkout invoice (123.00 each), G's $61.50; F's void one is not.
    assert (issued.value, issued.detail) == ("3", "€246.00, $61.50")
    assert (collected.value, collected.detail) == ("1 payment", "$61.50")


def test_a_month_with_nothing_is_zero_and_no_data_means_no_chart():
    charts = ops_charts(now=NOW)
    assert [(f.title, f.charts) for f in charts["families"]] == [
        ("Monthly recurring revenue (MRR)", []),
        ("Invoiced, collected and credited", []),
        ("Failed payments", []),
        ("Cancellations by reason", []),
        ("New subscriptions", []),
    ]
    assert charts["period"] == "Dec 2025 – Nov 2026"


def test_the_charts_draw_every_value_with_a_title_and_a_table(world):
    families = {f.title: f for f in ops_charts(now=NOW)["families"]}
    mrr_eur, mrr_usd = families["Monthly recurring revenue (MRR)"].charts
    assert (mrr_eur.currency, mrr_usd.currency) == ("EUR", "USD")
    assert [row.cells for row in mrr_eur.rows][-2:] == [["€200.01"], ["€200.01"]]
    assert mrr_eur.rows[-1].month == "Nov 2026 (so far)"
    assert mrr_eur.rows[0].cells == ["€0.00"]
    # One bar per non-zero month, the tallest reaching the axis maximum's share.
    assert len(mrr_eur.bars) == 9
    assert mrr_eur.bars[-1].title == "Nov 2026 (so far): MRR €200.01"
    assert [t.label for t in mrr_eur.ticks] == ["0", "250", "500"]
    assert mrr_eur.summary == (
        "Monthly recurring revenue (MRR) in EUR: €0.00 in Dec 2025, €200.01 in Nov 2026. "
        "The data table lists every month."
    )
    money_usd = families["Invoiced, collected and credited"].charts[1]
    assert [s.name for s in money_usd.series] == ["Invoiced", "Collected", "Credited"]
    assert money_usd.rows[-1].cells == ["$61.50", "$61.50", "$6.15"]
    assert money_usd.summary.startswith(
        "Invoiced, collected and credited in USD, Dec 2025 to Nov 2026, in all: "
        "Invoiced $61.50; Collected $61.50; Credited $6.15."
    )
    # Cancellations are stacked: one bar per reason in a month, one above the other.
    cancellations_eur = families["Cancellations by reason"].charts[0]
    assert [b.title for b in cancellations_eur.bars] == [
        "Jun 2026: Another reason 1",
        "Jul 2026: It is too expensive 1",
    ]


@pytest.fixture
def ops(db):
    user = UserFactory(email="ops@portal.test", is_staff=True)
    user.groups.add(Group.objects.get(name=staff.BILLING))
    return user


def test_the_dashboard_shows_the_charts_accessibly(client_for, ops, world):
    with time_machine.travel(NOW, tick=False):
        body = client_for(ops).get("/admin/").content.decode()
    assert "Last 12 months (Dec 2025 – Nov 2026)" in body
    assert (
        '<svg class="ops-chart-svg" width="100%" height="176" role="img" '
        'aria-labelledby="ops-chart-mrr-eur-title ops-chart-mrr-eur-desc"'
    ) in body
    assert (
        '<title id="ops-chart-mrr-eur-title">Monthly recurring revenue (MRR) (EUR)</title>' in body
    )
    assert '<summary>Data table<span class="visually-hidden">: Failed payments (EUR)</span>' in body
    assert '<th scope="row">Nov 2026 (so far)</th><td class="num">€200.01</td>' in body
    # The legend names every series in text.
    assert '<li><span class="ops-swatch ops-bar-4"></span>Written off</li>' in body
    # Billing staff may export: the form is on the dashboard.
    assert 'action="/admin/finance-export/"' in body


def test_read_only_staff_see_the_charts_but_not_the_export_form(client_for, world):
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=staff.READ_ONLY))
    with time_machine.travel(NOW, tick=False):
        body = client_for(user).get("/admin/").content.decode()
    assert "Last 12 months" in body
    assert "finance-export" not in body


def bulk_organisations(count: int, *, prefix: str) -> None:
    """`count` organisations, each with a monthly subscription, a paid period invoice with its
    plan line, its payment and a failed-payment case, in bulk (a few seconds for 10,000)."""
    plan = Plan.objects.get(code="professional")
    start = at(11)
    orgs = Organisation.objects.bulk_create(
        [
            Organisation(
                name=f"Bulk {i}", slug=f"{prefix}-{i}", primary_email=f"{prefix}{i}@bulk.test"
            )
            for i in range(count)
        ],
        batch_size=2000,
    )
    subs = Subscription.objects.bulk_create(
        [
            Subscription(
                organisation=org,
                plan=plan,
                billing_cycle="monthly" if i % 4 else "annual",
                status="active",
                currency="EUR" if i % 3 else "USD",
                anchor_at=start,
                current_period_start=start,
                current_period_end=at(12),
                current_price=49_900,
                activated_at=start,
                canceled_at=at(11, 2) if i % 10 == 0 else None,
                cancellation_reason="not_using" if i % 10 == 0 else "",
            )
            for i, org in enumerate(orgs)
        ],
        batch_size=2000,
    )
    invoices = Invoice.objects.bulk_create(
        [
            Invoice(
                organisation_id=sub.organisation_id,
                subscription=sub,
                number=f"INV-{prefix}-{i:06d}",
                status="paid",
                currency=sub.currency,
                subtotal=49_900,
                tax_amount=0,
                total=49_900,
                amount_paid=49_900,
                tax_rule="none",
                plan_name="Professional",
                billing_cycle=sub.billing_cycle,
                period_start=start,
                period_end=at(12),
                billing_details={},
                payment_method_kind="card",
                starts_term=True,
                issued_at=start,
                due_at=start,
            )
            for i, sub in enumerate(subs)
        ],
        batch_size=2000,
    )
    InvoiceLine.objects.bulk_create(
        [
            InvoiceLine(
                invoice=invoice,
                position=1,
                kind="plan",
                description="Professional plan",
                unit_amount=49_900,
                amount=49_900,
                period_start=start,
                period_end=at(12),
            )
            for invoice in invoices
        ],
        batch_size=2000,
    )
    Payment.objects.bulk_create(
        [
            Payment(
                organisation_id=invoice.organisation_id,
                invoice=invoice,
                method_kind="card",
                attempt=1,
                amount=invoice.total,
                currency=invoice.currency,
                status="succeeded",
                idempotency_key=f"bulk-{invoice.number}",
                created_at=start,
                completed_at=start,
            )
            for invoice in invoices
        ],
        batch_size=2000,
    )
    DunningCase.objects.bulk_create(
        [
            DunningCase(
                organisation_id=sub.organisation_id,
                subscription=sub,
                status="resolved",
                started_at=at(11, 3),
                closed_at=at(11, 4),
            )
            for sub in subs[::5]
        ],
        batch_size=2000,
    )
    # Fresh statistics, as autovacuum keeps them on a real database: planned on the empty
    # tables' estimates, a join of 10,000 rows may take minutes.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def test_the_dashboard_costs_the_same_queries_at_1_and_10000_organisations(client_for, ops):
    client = client_for(ops)
    with time_machine.travel(NOW, tick=False):
        bulk_organisations(1, prefix="one")
        client.get("/admin/")
        with CaptureQueriesContext(connection) as one:
            assert client.get("/admin/").status_code == 200
        bulk_organisations(10_000, prefix="many")
        with CaptureQueriesContext(connection) as many:
            page = client.get("/admin/")
    assert len(many) == len(one)
    # The figures saw all of them. Of i = 0..9,999: USD when i % 3 == 0 (3,334), annual when
    # i % 4 == 0; so USD 834 annual (i % 12 == 0) and 2,500 monthly, EUR 1,666 annual and
    # 5,000 monthly; plus the first organisation, USD annual. At 499.00 a month or a year:
    # EUR 5,000 x 499.00 + 1,666 x 499.00 / 12 (69,277.83) = 2,564,277.83;
    # USD 2,500 x 499.00 + 835 x 499.00 / 12 (34,722.08) = 1,282,222.08.
    mrr = {c.currency: c.rows[-1].cells for c in page.context["charts"]["families"][0].charts}
    assert mrr == {"EUR": ["€2,564,277.83"], "USD": ["$1,282,222.08"]}
