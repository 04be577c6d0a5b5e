"""Settings > Subscription > Usage history (billing.usage_history, usage.history): the last
twelve usage months with their overage and invoice, a month's daily chart, the CSV.

Standard: 50,000 transactions a month, $5.00 per started 1,000 above. The clock is fixed; every
date derives from the anchors below.
"""

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.invoicing import billing_run_issue
from billing.models import OverageCharge
from subscriptions.models import PlanChange, Subscription
from subscriptions.periods import period_start
from tests.accounts.factories import OrganisationFactory
from tests.billing.factories import issued_invoice
from tests.subscriptions.factories import (
    PERIOD_START,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
    plan,
)
from usage.models import UsageCounter
from usage.months import usage_month_of

pytestmark = pytest.mark.django_db

UTC_ZONE = ZoneInfo("UTC")
# An anchor fifteen usage months before NOW: the history shows the last twelve.
OLD_ANCHOR = datetime(2025, 9, 1, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 12, 14, 0, tzinfo=UTC)  # in the month 1 Nov – 1 Dec 2026


@pytest.fixture
def now(time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


def month_start(anchor, index, zone=UTC_ZONE):
    return period_start(anchor=anchor, cycle="monthly", index=index, zone=zone)


def use(organisation, start, transactions, *, days=(0, 9)):
    """`transactions` on a few days of the usage month starting at `start`."""
    local = start.astimezone(organisation.tzinfo).date()
    share, rest = divmod(transactions, len(days))
    UsageCounter.objects.bulk_create(
        UsageCounter(
            organisation=organisation,
            month_start=start,
            day=local + timedelta(days=offset),
            transactions=share + (rest if n == 0 else 0),
        )
        for n, offset in enumerate(days)
    )


def billed(subscription, start, *, transactions, limit=50_000, number):
    """An OverageCharge on an issued invoice, as the billing run records it."""
    units = -(-(transactions - limit) // 1000)
    invoice = issued_invoice(organisation=subscription.organisation, number=number, currency="USD")
    return OverageCharge.objects.create(
        organisation=subscription.organisation,
        subscription=subscription,
        invoice=invoice,
        month_start=start,
        month_end=usage_month_of(subscription, start)[1],
        transactions=transactions,
        transaction_limit=limit,
        units=units,
        unit_amount=500,
        amount=units * 500,
        currency="USD",
        created_at=start + timedelta(days=31),
    )


def text(body: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def rows(body: str) -> dict[str, str]:
    """The month table: each row's data-month and its text."""
    table = re.search(r'<table class="stack usage-history">.*?</table>', body, re.S).group(0)
    return {
        key: text(row)
        for key, row in re.findall(r'<tr data-month="([^"]+)">(.*?)</tr>', table, re.S)
    }


def history_url(org):
    return reverse("billing:usage_history", args=[org.slug])


def month_url(org, key):
    return reverse("billing:usage_month", args=[org.slug, key])


def csv_url(org):
    return reverse("billing:usage_history_csv", args=[org.slug])


def get(client, url, status=200):
    response = client.get(url)
    assert response.status_code == status, response.content[:500]
    return response


# The months ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "billing_user"])
def test_last_twelve_months_newest_first(request, client_for, org, now, role):
    subscription = SubscriptionFactory(organisation=org, anchor_at=OLD_ANCHOR)
    for index in range(14):
        use(org, month_start(OLD_ANCHOR, index), 1000 * (index + 1))
    use(org, month_start(OLD_ANCHOR, 14), 54_000)  # the current month, so far
    billed(subscription, month_start(OLD_ANCHOR, 13), transactions=51_200, number="INV-2026-000777")
    body = get(client_for(request.getfixturevalue(role)), history_url(org)).content.decode()
    found = rows(body)
    # Sep, Oct and Nov 2025 are older than the last twelve months.
    assert list(found) == [month_start(OLD_ANCHOR, i).date().isoformat() for i in range(14, 2, -1)]
    assert found["2026-11-01"] == (
        "1 Nov – 1 Dec 2026 : daily chart So far 54,000 50,000 108% "
        "$20.00 so far 4 started thousands above the limit; billed when the month closes"
    )
    # The billed month shows what the invoice charged: its transactions, limit and amount.
    assert found["2026-10-01"] == (
        "1 Oct – 1 Nov 2026 : daily chart 51,200 50,000 102% "
        "$10.00 2 started thousands above the limit Invoice INV-2026-000777 (PDF)"
    )
    assert found["2026-09-01"] == "1 Sep – 1 Oct 2026 : daily chart 13,000 50,000 26% None"
    assert found["2025-12-01"] == "1 Dec 2025 – 1 Jan 2026 : daily chart 4,000 50,000 8% None"
    invoice_pdf = reverse("billing:invoice_pdf", args=[org.slug, "INV-2026-000777"])
    assert f'<a href="{invoice_pdf}" download>' in body
    assert f'<a href="{month_url(org, "2026-10-01")}">' in body
    assert f'href="{csv_url(org)}" download>Download CSV</a>' in body


def test_a_young_subscription_shows_only_its_months(client_for, org, admin, time_machine):
    SubscriptionFactory(organisation=org)  # anchored 1 Nov 2026
    time_machine.move_to(datetime(2027, 1, 20, tzinfo=UTC), tick=False)
    use(org, PERIOD_START, 700)
    found = rows(get(client_for(admin), history_url(org)).content.decode())
    assert list(found) == ["2027-01-01", "2026-12-01", "2026-11-01"]
    assert found["2026-12-01"] == "1 Dec 2026 – 1 Jan 2027 : daily chart 0 50,000 0% None"
    assert found["2026-11-01"].startswith("1 Nov – 1 Dec 2026 : daily chart 700 50,000 1% ")


def test_months_in_the_organisations_time_zone(client_for, org, admin, now):
    org.time_zone = "Asia/Tokyo"
    org.save(update_fields=["time_zone"])
    anchor = datetime(2026, 9, 30, 20, 0, tzinfo=UTC)  # 1 Oct 05:00 in Tokyo
    SubscriptionFactory(organisation=org, anchor_at=anchor)
    use(org, month_start(anchor, 1, ZoneInfo("Asia/Tokyo")), 42)
    found = rows(get(client_for(admin), history_url(org)).content.decode())
    assert list(found) == ["2026-11-01", "2026-10-01"]
    assert found["2026-11-01"].startswith("1 Nov – 1 Dec 2026 : daily chart So far 42 ")
    get(client_for(admin), month_url(org, "2026-11-01"))
    get(client_for(admin), month_url(org, "2026-10-31"), status=404)  # the UTC date


def test_an_ended_subscription_stops_at_its_last_month(client_for, org, admin, now):
    SubscriptionFactory(
        organisation=org,
        anchor_at=OLD_ANCHOR,
        status=Subscription.Status.ENDED,
        ended_at=month_start(OLD_ANCHOR, 12),  # 1 Sep 2026 09:00
    )
    found = rows(get(client_for(admin), history_url(org)).content.decode())
    assert list(found)[:2] == ["2026-08-01", "2026-07-01"]
    assert len(found) == 12
    assert "So far" not in found["2026-08-01"]


def test_the_limit_of_a_past_month_is_the_plan_at_its_close(client_for, org, admin, now):
    subscription = SubscriptionFactory(
        organisation=org, anchor_at=OLD_ANCHOR, plan=plan("professional")
    )
    limit_now = plan("professional").monthly_transactions
    # Standard until an upgrade to Enterprise on 14 Aug 2026, then Professional by a downgrade
    # applied at the renewal of 1 Oct (its closed_at is that instant, the month's end).
    for kind, from_plan, to_plan, closed_at in (
        ("upgrade", "standard", "enterprise", datetime(2026, 8, 14, 10, tzinfo=UTC)),
        ("downgrade", "enterprise", "professional", month_start(OLD_ANCHOR, 13)),
    ):
        PlanChange.objects.create(
            subscription=subscription,
            kind=kind,
            status=PlanChange.Status.APPLIED,
            from_plan=plan(from_plan),
            to_plan=plan(to_plan),
            billing_cycle="monthly",
            closed_at=closed_at,
        )
    PlanChange.objects.create(  # a cancelled change never applied
        subscription=subscription,
        kind="downgrade",
        status=PlanChange.Status.CANCELED,
        from_plan=plan("professional"),
        to_plan=plan("standard"),
        billing_cycle="monthly",
        closed_at=NOW - timedelta(days=1),
    )
    found = rows(get(client_for(admin), history_url(org)).content.decode())
    limits = {key: int(row.split()[-3].replace(",", "")) for key, row in found.items()}
    enterprise = plan("enterprise").monthly_transactions
    assert limits["2026-07-01"] == 50_000  # closed before the upgrade of 14 Aug
    assert limits["2026-08-01"] == enterprise  # the upgrade came within it: closed on Enterprise
    assert limits["2026-09-01"] == enterprise  # closed on 1 Oct, the instant of the change
    assert limits["2026-10-01"] == limit_now
    assert limits["2026-11-01"] == limit_now


def test_billed_overage_from_the_billing_run_links_its_invoice(
    client_for, org, admin, time_machine
):
    subscription = SubscriptionFactory(organisation=org)
    use(org, PERIOD_START, 52_345)
    renewal = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert billing_run_issue(now=renewal) == 1
    charge = OverageCharge.objects.get(subscription=subscription)
    time_machine.move_to(renewal + timedelta(days=3), tick=False)
    use(org, month_start(PERIOD_START, 1), 10)
    client = client_for(admin)
    found = rows(get(client, history_url(org)).content.decode())
    assert found == {
        "2026-12-01": "1 Dec 2026 – 1 Jan 2027 : daily chart So far 10 50,000 0% None",
        "2026-11-01": "1 Nov – 1 Dec 2026 : daily chart 52,345 50,000 104% $15.00 3 started "
        f"thousands above the limit Invoice {charge.invoice.number} (PDF)",
    }
    rows_csv = list(csv.reader(io.StringIO(get(client, csv_url(org)).content.decode())))
    assert rows_csv[2] == [
        "2026-11-01",
        "2026-12-01",
        "52345",
        "50000",
        "104",
        "3",
        "15.00",
        "USD",
        charge.invoice.number,
        "billed",
    ]


def test_a_closed_month_over_the_limit_not_billed_yet(client_for, org, admin, now):
    SubscriptionFactory(organisation=org, anchor_at=OLD_ANCHOR)
    use(org, month_start(OLD_ANCHOR, 13), 50_001)
    found = rows(get(client_for(admin), history_url(org)).content.decode())
    assert found["2026-10-01"] == (
        "1 Oct – 1 Nov 2026 : daily chart 50,001 50,000 100% Not billed yet "
        "1 started thousand above the limit"
    )


def test_monthly_chart_against_the_limit(client_for, org, admin, now):
    subscription = SubscriptionFactory(organisation=org, anchor_at=month_start(OLD_ANCHOR, 12))
    use(org, month_start(OLD_ANCHOR, 12), 20_000)
    use(org, month_start(OLD_ANCHOR, 13), 60_000)
    billed(subscription, month_start(OLD_ANCHOR, 13), transactions=60_000, number="INV-2026-000900")
    body = get(client_for(admin), history_url(org)).content.decode()
    bars = [
        dict(re.findall(r'([\w-]+)="([^"]*)"', attributes), title=title)
        for attributes, title in re.findall(r"<rect ([^>]*)><title>([^<]*)</title></rect>", body)
    ]
    # Oldest to newest, left to right; the axis goes to 100k (the busiest month has 60,000).
    assert [(b["data-month"], b["class"], b["height"]) for b in bars] == [
        ("2026-09-01", "usage-chart-bar", "25.6"),
        ("2026-10-01", "usage-chart-bar is-over", "76.8"),
        ("2026-11-01", "usage-chart-bar is-today", "0"),
    ]
    assert [b["title"] for b in bars] == [
        "1 Sep – 1 Oct 2026: 20,000 of 50,000 transactions (40%)",
        "1 Oct – 1 Nov 2026: 60,000 of 50,000 transactions (120%)",
        "1 Nov – 1 Dec 2026 (so far): 0 of 50,000 transactions (0%)",
    ]
    limits = re.search(r'<g class="usage-chart-limit" aria-hidden="true">(.*?)</g>', body, re.S)
    # 50,000 of 100k: half the 128 px plot above the baseline at 140.
    assert re.findall(r'<line x1="([^"]+)" x2="([^"]+)" y1="76" y2="76">', limits.group(1)) == [
        ("0%", "33.3333%"),
        ("33.3333%", "66.6667%"),
        ("66.6667%", "100%"),
    ]
    assert re.findall(r'text-anchor="middle">([^<]+)</text>', body) == ["Sep 26", "Oct", "Nov"]
    assert (
        '<title id="usage-history-chart-title">Transactions per usage month against the limit, '
        "1 Sep 2026 to 1 Dec 2026</title>" in body
    )


# A month's page ---------------------------------------------------------------------------------


def test_a_month_opens_with_its_daily_chart(client_for, org, admin, now):
    subscription = SubscriptionFactory(organisation=org, anchor_at=OLD_ANCHOR)
    use(org, month_start(OLD_ANCHOR, 13), 51_000, days=(0, 4, 30))
    billed(subscription, month_start(OLD_ANCHOR, 13), transactions=51_000, number="INV-2026-000321")
    body = get(client_for(admin), month_url(org, "2026-10-01")).content.decode()
    days = re.findall(r'data-day="([^"]+)" data-transactions="(\d+)"', body)
    assert len(days) == 32  # 1 Oct 09:00 to 1 Nov 09:00 UTC touches 1 Oct to 1 Nov
    assert [d for d in days if d[1] != "0"] == [
        ("2026-10-01", "17000"),
        ("2026-10-05", "17000"),
        ("2026-10-31", "17000"),
    ]
    page = text(body)
    assert "Usage month 1 Oct – 1 Nov 2026" in page
    assert (
        "Transactions 51,000 Limit 50,000 Used 102% Overage $5.00 1 started thousand above "
        "the limit Invoice INV-2026-000321 (PDF)" in page
    )
    assert "Transactions per day, 1 Oct to 1 Nov 2026" in page
    # Its neighbours in the history.
    assert f'href="{month_url(org, "2026-11-01")}">← Newer: 1 Nov – 1 Dec 2026</a>' in body
    assert f'href="{month_url(org, "2026-09-01")}">Older: 1 Sep – 1 Oct 2026 →</a>' in body


def test_the_current_month_is_so_far(client_for, org, admin, now):
    SubscriptionFactory(organisation=org)
    use(org, PERIOD_START, 30, days=(11,))
    body = get(client_for(admin), month_url(org, "2026-11-01")).content.decode()
    assert "So far" in body
    assert "Transactions 30 so far Limit 50,000 Used 0% Overage None" in text(body)
    assert 'class="usage-chart-bar is-today" x="' in body
    # The first month of the history: no older one to go to.
    assert "→</a>" not in body


@pytest.mark.parametrize(
    "key",
    [
        "2026-11-02",  # not the first day of a usage month
        "2025-10-01",  # a month older than the last twelve
        "2025-08-01",  # before the anchor
        "2026-12-01",  # a future month
        "2026-13-01",
        "2026-02-30",
        "20261101",
        "2026-W44-1",
        "next",
        "%00",
        "9" * 400,
    ],
)
def test_a_month_outside_the_history_is_404(client_for, org, admin, now, key):
    SubscriptionFactory(organisation=org, anchor_at=OLD_ANCHOR)
    response = client_for(admin).get(f"/o/{org.slug}/settings/subscription/usage/{key}/")
    assert response.status_code == 404


# Who sees it -----------------------------------------------------------------------------------


def test_a_member_is_refused(client_for, org, member, now):
    SubscriptionFactory(organisation=org)
    use(org, PERIOD_START, 5)
    client = client_for(member)
    for url in (history_url(org), month_url(org, "2026-11-01"), csv_url(org)):
        response = client.get(url)
        assert response.status_code == 403
        assert b"2026-11-01" not in response.content


def test_another_organisation_sees_nothing(client_for, org, other_org, admin, outsider, now):
    """An outsider gets 404 on A's pages; A's pages never show B's months or counters."""
    SubscriptionFactory(organisation=org)
    other_anchor = datetime(2026, 10, 15, 9, tzinfo=UTC)
    SubscriptionFactory(organisation=other_org, anchor_at=other_anchor)
    use(org, PERIOD_START, 5)
    use(other_org, month_start(other_anchor, 0), 999_000)
    use(other_org, PERIOD_START, 777_000)  # even a counter under A's month start
    for url in (history_url(org), month_url(org, "2026-11-01"), csv_url(org)):
        assert client_for(outsider).get(url).status_code == 404
    client = client_for(admin)
    found = rows(get(client, history_url(org)).content.decode())
    assert found == {"2026-11-01": "1 Nov – 1 Dec 2026 : daily chart So far 5 50,000 0% None"}
    # B's month under A's slug: not one of A's months.
    get(client, month_url(org, "2026-10-15"), status=404)
    assert "999" not in get(client, csv_url(org)).content.decode()


def test_without_a_subscription(client_for, org, admin, now):
    body = text(get(client_for(admin), history_url(org)).content.decode())
    assert "No usage history yet. Acme Trading has no subscription." in body
    assert "Download CSV" not in body
    get(client_for(admin), csv_url(org), status=404)
    get(client_for(admin), month_url(org, "2026-11-01"), status=404)


def test_the_usage_section_links_to_the_history(client_for, org, admin, now):
    SubscriptionFactory(organisation=org)
    body = get(client_for(admin), reverse("subscriptions:settings", args=[org.slug]))
    assert f'<a href="{history_url(org)}">Usage history</a>' in body.content.decode()


# The CSV ----------------------------------------------------------------------------------------


def test_csv_download(client_for, org, admin, now):
    subscription = SubscriptionFactory(organisation=org, anchor_at=month_start(OLD_ANCHOR, 12))
    use(org, month_start(OLD_ANCHOR, 12), 49_999)
    use(org, month_start(OLD_ANCHOR, 13), 61_000)
    use(org, month_start(OLD_ANCHOR, 14), 50_500)
    billed(subscription, month_start(OLD_ANCHOR, 13), transactions=61_000, number="INV-2026-000555")
    client = client_for(admin)
    response = get(client, csv_url(org))
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        'attachment; filename="usage-history-acme-2026-09-01-to-2026-11-01.csv"'
    )
    assert response["Cache-Control"] == "private, no-store"
    body = response.content.decode()
    assert body.splitlines() == [
        "month_start,month_end,transactions,limit,percent,overage_units,overage_amount,"
        "currency,invoice_number,status",
        "2026-11-01,2026-12-01,50500,50000,101,1,5.00,USD,,so far",
        "2026-10-01,2026-11-01,61000,50000,122,11,55.00,USD,INV-2026-000555,billed",
        "2026-09-01,2026-10-01,49999,50000,99,0,0.00,USD,,no overage",
    ]
    assert "\r\n" in body
    # Twice, the same file.
    assert get(client, csv_url(org)).content.decode() == body


# Cost: the counters, never Sync Info -----------------------------------------------------------


def sync_info_rows(org, flow, count):
    """`count` Sync Info rows over the current usage month, in one INSERT ... SELECT."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at, retention_days) "
            "SELECT %s, %s, %s, 1, 'r-' || n, 'success', 'outbound', "
            "%s::timestamptz + n * interval '1 second', 30 FROM generate_series(1, %s) AS n",
            [org.pk, flow.environment_id, flow.pk, PERIOD_START, count],
        )


def test_constant_queries_whatever_the_months_and_rows(client_for, org, admin, now):
    subscription = SubscriptionFactory(organisation=org, anchor_at=OLD_ANCHOR)
    flow = ProcessFlowFactory(organisation=org, environment=EnvironmentFactory(organisation=org))
    client = client_for(admin)
    urls = (history_url(org), month_url(org, "2026-11-01"), csv_url(org))
    for url in urls:
        get(client, url)  # warm the session
    use(org, month_start(OLD_ANCHOR, 14), 10)
    few = {}
    for url in urls:
        with CaptureQueriesContext(connection) as queries:
            get(client, url)
        few[url] = len(queries.captured_queries)
    # Twelve months with counters on every day, overage billed in six, a plan change, and
    # 50,000 Sync Info rows.
    for index in range(3, 14):
        start = month_start(OLD_ANCHOR, index)
        use(org, start, 55_000 + index, days=range(28))
        if index % 2:
            billed(subscription, start, transactions=55_000 + index, number=f"INV-2026-{index:06d}")
    PlanChange.objects.create(
        subscription=subscription,
        kind="upgrade",
        status=PlanChange.Status.APPLIED,
        from_plan=plan("enterprise"),
        to_plan=plan("standard"),
        billing_cycle="monthly",
        closed_at=month_start(OLD_ANCHOR, 6),
    )
    sync_info_rows(org, flow, 50_000)
    for url in urls:
        with CaptureQueriesContext(connection) as queries:
            response = get(client, url)
        assert len(queries.captured_queries) == few[url], url
        assert not any("usage_syncinfo" in q["sql"] for q in queries.captured_queries)
    assert len(rows(get(client, history_url(org)).content.decode())) == 12
    assert response.content.decode().count("billed\r\n") == 6


def test_the_month_query_is_an_index_scan_on_the_counters(client_for, org, admin, now):
    """EXPLAIN of the page's counter query with many organisations' counters (two years of
    days for 300 organisations, ~220,000 rows) and 200,000 Sync Info rows: an index scan of the
    organisation's counters, never a sequential scan, never Sync Info. The same at 10 million
    Sync Info rows: bench/usage_page.py."""
    SubscriptionFactory(organisation=org, anchor_at=OLD_ANCHOR)
    flow = ProcessFlowFactory(organisation=org, environment=EnvironmentFactory(organisation=org))
    sync_info_rows(org, flow, 200_000)
    others = [OrganisationFactory().pk for _ in range(300)]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_usagecounter (organisation_id, month_start, day, transactions) "
            "SELECT o, %s::timestamptz + (d / 30) * interval '1 month', "
            "(%s::date + d), 100 FROM unnest(%s::bigint[]) AS o, generate_series(0, 729) AS d",
            [OLD_ANCHOR, OLD_ANCHOR.date(), [*others, org.pk]],
        )
        cursor.execute("ANALYZE usage_usagecounter")
    with CaptureQueriesContext(connection) as queries:
        get(client_for(admin), history_url(org))
    [query] = [q["sql"] for q in queries.captured_queries if "usage_usagecounter" in q["sql"]]
    assert not any("usage_syncinfo" in q["sql"] for q in queries.captured_queries)
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {query}")
        plan_text = "\n".join(row[0] for row in cursor.fetchall())
    # One of the counters' indexes that start with the organisation: only its rows are read.
    assert re.search(r"Index (Only )?Scan using \S+ on usage_usagecounter", plan_text), plan_text
    assert f"Index Cond: (organisation_id = {org.pk})" in plan_text, plan_text
    assert "Seq Scan" not in plan_text, plan_text
