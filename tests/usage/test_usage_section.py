"""Settings > Subscription > Usage (article section 11): this usage month's transactions against
the plan's limit, the overage so far, the daily chart and the alerts sent."""

import json
import re
from datetime import UTC, date, datetime, timedelta

import pytest
from dateutil.relativedelta import relativedelta
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.audit import Actor
from accounts.models import Organisation
from subscriptions.models import Plan
from subscriptions.selectors import subscription_for
from tests.subscriptions.factories import (
    PERIOD_START,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.models import UsageAlert, UsageCounter
from usage.selectors import usage_summary
from usage.services import api_key_create

pytestmark = pytest.mark.django_db

# Inside the usage month 1 Nov 2026 09:00 UTC - 1 Dec 2026 09:00 UTC (the factory's anchor).
NOW = datetime(2026, 11, 12, 14, 0, tzinfo=UTC)


@pytest.fixture
def now(time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


@pytest.fixture
def setup(org, admin, now):
    subscription = SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    environment = EnvironmentFactory(organisation=org, name="Production")
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    _, plain = api_key_create(environment=environment, actor=Actor(user=admin), name="rt", now=now)
    return {"subscription": subscription, "flow": flow, "plain": plain}


def limit_to(transactions: int) -> None:
    Plan.objects.filter(code="standard").update(monthly_transactions=transactions)


def post(client, setup, count: int, *, key: str, at: datetime = NOW):
    records = [
        {
            "flow_id": str(setup["flow"].public_id),
            "record_key": f"{key}-{n}",
            "status": "success",
            "direction": "outbound",
            "synced_at": at.isoformat(),
        }
        for n in range(count)
    ]
    response = client.post(
        "/api/v1/sync-info",
        data=json.dumps({"records": records}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {setup['plain']}",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    assert response.status_code == 201, response.content
    return response


def page(client, org) -> str:
    response = client.get(reverse("subscriptions:settings", args=[org.slug]))
    assert response.status_code == 200
    return response.content.decode()


def text(body: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def section(body: str) -> str:
    match = re.search(r'<section class="card usage.*?</section>', body, re.S)
    assert match, "no Usage section"
    return match.group(0)


def progress(body: str) -> dict:
    match = re.search(r"<progress ([^>]*)>", body)
    assert match
    return dict(re.findall(r'([\w-]+)="([^"]*)"', match.group(1)))


def bars(body: str) -> list[dict]:
    found = []
    for attributes, title in re.findall(
        r'<rect class="usage-chart-bar[^"]*" ([^>]*)><title>([^<]*)</title></rect>', body
    ):
        bar = dict(re.findall(r'([\w-]+)="([^"]*)"', attributes))
        bar["title"] = title
        found.append(bar)
    return found


def test_a_month_across_new_year_shows_both_years(client_for, org, admin, time_machine):
    time_machine.move_to(datetime(2026, 12, 15, 12, 0, tzinfo=UTC), tick=False)
    SubscriptionFactory(
        organisation=org,
        plan=Plan.objects.get(code="standard"),
        anchor_at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
    )
    body = section(page(client_for(admin), org))
    assert "Usage month 1 Dec 2026 – 1 Jan 2027 · 17 days left" in text(body)


@pytest.mark.parametrize("role", ["admin", "billing_user"])
def test_figures_after_posting_batches(request, client, client_for, org, setup, role):
    limit_to(100)
    post(client, setup, 50, key="a")
    post(client, setup, 32, key="b", at=NOW - timedelta(days=2))
    post(client, setup, 32, key="b", at=NOW - timedelta(days=2))  # a resend counts once
    body = page(client_for(request.getfixturevalue(role)), org)
    usage = text(section(body))
    assert "This month's transactions: 82 of 100 (82%) Approaching limit" in usage
    assert "Usage month 1 Nov – 1 Dec 2026 · 19 days left" in usage
    assert progress(body) | {"aria-labelledby": ""} == {
        "class": "usage-bar usage-bar--warning",
        "max": "100",
        "value": "82",
        "aria-labelledby": "",
        "aria-valuetext": "82 of 100 transactions (82%)",
    }
    row = re.search(r"<th scope=\"row\">Transactions per month</th>(.*?)</tr>", body, re.S)
    assert text(row.group(1)) == "100 82"


def test_a_month_in_the_organisations_time_zone(client, client_for, org, admin, setup):
    Organisation.objects.filter(pk=org.pk).update(time_zone="Asia/Tokyo")
    post(client, setup, 3, key="a")
    body = section(page(client_for(admin), org))
    # 09:00 UTC is 18:00 in Tokyo.
    assert 'title="The next usage month starts on 1 December 2026 at 18:00"' in body
    assert "Usage month 1 Nov – 1 Dec 2026 · 19 days left" in text(body)
    assert "This month's transactions: 3 of 50,000 (0%)" in text(body)


@pytest.mark.parametrize(
    ("used", "level", "badge", "value"),
    [
        (79, "ok", None, "79"),
        (80, "warning", "Approaching limit", "80"),
        (99, "warning", "Approaching limit", "99"),
        (100, "over", "Limit reached", "100"),
        (164, "over", "Limit reached", "100"),  # the bar never grows past its track
    ],
)
def test_colour_changes_at_80_and_100_percent(
    client, client_for, org, admin, setup, used, level, badge, value
):
    limit_to(100)
    post(client, setup, used, key="a")
    body = page(client_for(admin), org)
    assert f'<section class="card usage usage--{level}"' in body
    bar = progress(body)
    assert (bar["class"], bar["max"], bar["value"]) == (
        f"usage-bar usage-bar--{level}",
        "100",
        value,
    )
    usage = text(section(body))
    assert f"This month's transactions: {used} of 100 ({used}%)" in usage
    for other in ("Approaching limit", "Limit reached"):
        assert (other in usage) == (other == badge)


@pytest.mark.parametrize(
    ("used", "overage"),
    [
        (
            10,
            "No overage this month. Above 10, each started 1,000 transactions costs $5.00;",
        ),
        (
            11,
            "Overage so far: 1 started thousand above the limit × $5.00 = $5.00, "
            "on your next invoice.",
        ),
        (
            1010,
            "Overage so far: 1 started thousand above the limit × $5.00 = $5.00, "
            "on your next invoice.",
        ),
        (
            1011,
            "Overage so far: 2 started thousands above the limit × $5.00 = $10.00, "
            "on your next invoice.",
        ),
    ],
)
def test_overage_so_far(client, client_for, org, admin, setup, used, overage):
    limit_to(10)
    post(client, setup, used, key="a")
    assert overage in text(section(page(client_for(admin), org)))


def test_overage_in_the_subscription_currency_and_annual_wording(
    client, client_for, org, admin, now
):
    limit_to(10)
    environment = EnvironmentFactory(organisation=org)
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    SubscriptionFactory(organisation=org, currency="EUR", billing_cycle="annual")
    _, plain = api_key_create(environment=environment, actor=Actor(user=admin), name="k", now=NOW)
    post(client, {"flow": flow, "plain": plain}, 1011, key="a")
    usage = text(section(page(client_for(admin), org)))
    # Annual plans: an overage-only invoice at the close of each usage month
    # (docs/architecture.md#decision-anniversary-billing-periods-and-usage-months).
    assert (
        "2 started thousands above the limit × €4.50 = €9.00, on an overage invoice when this "
        "usage month closes on 1 Dec." in usage
    )


def test_daily_chart_has_one_bar_per_day(client, client_for, org, admin, setup):
    post(client, setup, 40, key="a")  # 12 Nov
    post(client, setup, 10, key="b", at=datetime(2026, 11, 3, 10, tzinfo=UTC))
    post(client, setup, 3, key="c", at=datetime(2026, 11, 1, 9, 30, tzinfo=UTC))
    body = page(client_for(admin), org)
    found = bars(body)
    # 1 Nov 09:00 to 1 Dec 09:00 UTC touches 31 calendar days: 1 Nov to 1 Dec.
    assert [b["data-day"] for b in found] == [
        (date(2026, 11, 1) + timedelta(days=n)).isoformat() for n in range(31)
    ]
    by_day = {b["data-day"]: b for b in found}
    # The axis goes to 50 (the busiest day has 40); the plot is 128 px high.
    assert by_day["2026-11-12"]["height"] == "102.4"
    assert by_day["2026-11-12"]["y"] == "37.6"
    assert by_day["2026-11-03"]["height"] == "25.6"
    assert by_day["2026-11-01"]["height"] == "7.68"
    assert by_day["2026-11-02"]["height"] == "0"
    assert by_day["2026-11-12"]["title"] == "Thu 12 Nov (today): 40 transactions"
    assert by_day["2026-11-01"]["title"] == "Sun 1 Nov: 3 transactions"
    assert by_day["2026-11-02"]["title"] == "Mon 2 Nov: 0 transactions"
    assert "is-today" in body.split('data-day="2026-11-12"')[0].rsplit("<rect", 1)[1]
    assert sum(int(b["data-transactions"]) for b in found) == 53
    ticks = re.findall(
        r'<text x="-8" y="([\d.]+)" dy="0.32em" text-anchor="end">([^<]+)</text>', body
    )
    assert ticks == [("140", "0"), ("76", "25"), ("12", "50")]
    assert '<title id="usage-chart-title">Transactions per day, 1 Nov to 1 Dec 2026</title>' in body
    days = re.findall(r'text-anchor="middle">([^<]+)</text>', body)
    assert days == ["1 Nov", "8", "15", "22", "29"]


def test_chart_bars_carry_their_display_strings(org, now):
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    UsageCounter.objects.bulk_create(
        [
            UsageCounter(organisation=org, month_start=PERIOD_START, day=day, transactions=count)
            for day, count in ((date(2026, 11, 3), 1), (date(2026, 11, 12), 12_345))
        ]
    )
    subscription = subscription_for(organisation=org)
    subscription.organisation = org
    bars = {
        bar.iso_day: bar for bar in usage_summary(subscription=subscription, now=NOW).chart.bars
    }
    assert [
        (bar.css_class, bar.title)
        for bar in (bars["2026-11-02"], bars["2026-11-03"], bars["2026-11-12"], bars["2026-12-01"])
    ] == [
        ("usage-chart-bar", "Mon 2 Nov: 0 transactions"),
        ("usage-chart-bar", "Tue 3 Nov: 1 transaction"),
        ("usage-chart-bar is-today", "Thu 12 Nov (today): 12,345 transactions"),
        ("usage-chart-bar is-future", "Tue 1 Dec: 0 transactions"),
    ]


def test_selector_series_and_queries(org, now, django_assert_max_num_queries):
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    start = PERIOD_START
    UsageCounter.objects.bulk_create(
        [
            UsageCounter(
                organisation=org, month_start=start, day=date(2026, 11, 5), transactions=7
            ),
            UsageCounter(
                organisation=org, month_start=start, day=date(2026, 11, 6), transactions=5
            ),
            # The previous usage month does not count.
            UsageCounter(
                organisation=org,
                month_start=start - timedelta(days=31),
                day=date(2026, 10, 20),
                transactions=900,
            ),
        ]
    )
    UsageAlert.objects.create(
        organisation=org,
        month_start=start,
        month_end=start + relativedelta(months=1),
        threshold=80,
        sent_at=NOW,
        transactions=40_000,
    )
    subscription = subscription_for(organisation=org)
    subscription.organisation = org
    with django_assert_max_num_queries(2):
        summary = usage_summary(subscription=subscription, now=NOW)
    assert (summary.used, summary.limit, summary.percent, summary.level) == (12, 50_000, 0, "ok")
    assert (summary.days_left, len(summary.days)) == (19, 31)
    assert [(d.day.day, d.transactions) for d in summary.days if d.transactions] == [(5, 7), (6, 5)]
    assert [(a.threshold, a.sent_at) for a in summary.alerts] == [(80, NOW)]
    assert (summary.overage_units, summary.overage_amount, summary.overage_per_1000) == (0, 0, 500)


def test_alerts_sent_are_listed(client, client_for, org, admin, setup):
    limit_to(10)
    body = page(client_for(admin), org)
    assert "No alert this month." in text(section(body))
    post(client, setup, 8, key="a")
    post(client, setup, 4, key="b")
    usage = text(section(page(client_for(admin), org)))
    assert "80% alert emailed on 12 Nov" in usage
    assert "100% alert emailed on 12 Nov" in usage
    assert "No alert this month." not in usage


def test_upgrade_advice_from_80_percent(client, client_for, org, admin, billing_user, setup):
    limit_to(100)
    post(client, setup, 79, key="a")
    assert "upgrade your plan" not in page(client_for(admin), org)
    post(client, setup, 1, key="b")
    body = section(page(client_for(admin), org))
    upgrade = reverse("billing:upgrade", args=[org.slug])
    assert (
        "If you regularly approach your limit, upgrade your plan to avoid overage charges." in body
    )
    assert f'<a href="{upgrade}">Upgrade your plan</a>' in body
    body = section(page(client_for(billing_user), org))
    assert upgrade not in body
    assert "An Admin of Acme Trading can upgrade it." in text(body)


def test_member_cannot_see_usage(client_for, org, member, setup):
    response = client_for(member).get(reverse("subscriptions:settings", args=[org.slug]))
    assert response.status_code == 403
    assert "This month's transactions" not in response.content.decode()


def test_another_organisations_usage_is_404(client, client_for, org, outsider, setup):
    post(client, setup, 5, key="a")
    response = client_for(outsider).get(reverse("subscriptions:settings", args=[org.slug]))
    assert response.status_code == 404


def test_usage_of_another_organisation_is_not_counted(client, client_for, org, other_org, setup):
    SubscriptionFactory(organisation=other_org)
    UsageCounter.objects.create(
        organisation=other_org, month_start=PERIOD_START, day=date(2026, 11, 12), transactions=999
    )
    post(client, setup, 5, key="a")
    from tests.accounts.factories import MembershipFactory

    admin = MembershipFactory(organisation=org, role="admin").user
    assert "This month's transactions: 5 of 50,000 (0%)" in text(page(client_for(admin), org))


def test_constant_number_of_queries_whatever_the_volume(client_for, org, admin, setup):
    client = client_for(admin)
    page(client, org)
    with CaptureQueriesContext(connection) as empty:
        body = page(client, org)
    assert "This month's transactions: 0 of 50,000 (0%)" in text(body)
    environment = setup["flow"].environment
    with connection.cursor() as cursor:
        # Thousands of Sync Info rows over the month, and the counters the ingest keeps.
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at, retention_days) "
            "SELECT %s, %s, %s, 1, 'r-' || n, 'success', 'outbound', "
            "%s::timestamptz + n * interval '3 minutes', 30 FROM generate_series(0, 5279) AS n",
            [org.pk, environment.pk, setup["flow"].pk, PERIOD_START],
        )
        cursor.execute(
            "INSERT INTO usage_usagecounter (organisation_id, month_start, day, transactions) "
            "SELECT %s, %s, (synced_at AT TIME ZONE 'UTC')::date, count(*) "
            "FROM usage_syncinfo WHERE organisation_id = %s GROUP BY 3",
            [org.pk, PERIOD_START, org.pk],
        )
    UsageAlert.objects.create(
        organisation=org,
        month_start=PERIOD_START,
        month_end=PERIOD_START + relativedelta(months=1),
        threshold=80,
        sent_at=NOW,
        transactions=1,
    )
    with CaptureQueriesContext(connection) as many:
        body = page(client, org)
    assert len(many.captured_queries) == len(empty.captured_queries)
    assert not any("usage_syncinfo" in q["sql"] for q in many.captured_queries)
    assert "This month's transactions: 5,280 of 50,000 (10%)" in text(body)
    assert len(bars(body)) == 31
