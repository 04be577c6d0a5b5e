"""The projection of a usage month to its end (usage/projection.py): the transactions so far,
plus the last 7 full days' average for the time left."""

from datetime import UTC, date, datetime, timedelta

import pytest

from subscriptions.models import Plan
from subscriptions.selectors import subscription_for
from tests.subscriptions.factories import PERIOD_START, SubscriptionFactory
from usage.models import UsageCounter
from usage.projection import projection_make, usage_projection
from usage.selectors import usage_summary

pytestmark = pytest.mark.django_db

# The factory's usage month runs 1 Nov 2026 09:00 UTC - 1 Dec 2026 09:00 UTC (organisation in UTC).
NOW = datetime(2026, 11, 12, 9, 0, tzinfo=UTC)  # 19 days left exactly


def counters(org, per_day: dict[date, int], month_start=PERIOD_START):
    UsageCounter.objects.bulk_create(
        UsageCounter(organisation=org, month_start=month_start, day=day, transactions=n)
        for day, n in per_day.items()
    )


def test_average_of_the_last_seven_full_days_for_the_time_left():
    projection = projection_make(
        used=10_000, window_total=7_000, window_days=7, month_end=NOW + timedelta(days=19), now=NOW
    )
    assert (projection.daily_average, projection.projected) == (1_000, 29_000)
    assert projection.percent_of(25_000) == 116
    assert projection.percent_of(29_001) == 99  # rounded down, as the alerts compare


def test_no_projection_before_a_full_day():
    assert projection_make(used=5, window_total=0, window_days=0, month_end=NOW, now=NOW) is None


def test_the_month_end_passed_adds_nothing():
    projection = projection_make(
        used=500, window_total=700, window_days=7, month_end=NOW - timedelta(hours=1), now=NOW
    )
    assert projection.projected == 500


def test_summary_and_query_agree_and_the_window_skips_today_and_older_days(org):
    subscription = SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    days = {date(2026, 11, d): 100 * d for d in range(1, 13)}  # 1..12 Nov, today the 12th
    counters(org, days)
    subscription = subscription_for(organisation=org)
    subscription.organisation = org
    summary = usage_summary(subscription=subscription, now=NOW)
    # 5..11 Nov: 100 * (5 + ... + 11) = 5,600 over 7 days = 800 a day, for 19 days.
    assert summary.used == sum(days.values()) == 7_800
    assert (summary.projection.daily_average, summary.projection.window_days) == (800, 7)
    assert summary.projection.projected == 7_800 + 800 * 19
    assert summary.projected_percent == (7_800 + 15_200) * 100 // 50_000
    queried = usage_projection(
        organisation_id=org.pk,
        anchor_at=subscription.anchor_at,
        zone=org.tzinfo,
        used=summary.used,
        month_end=summary.month_end,
        now=NOW,
    )
    assert queried == summary.projection


def test_the_window_reaches_into_the_month_before(org):
    subscription = SubscriptionFactory(
        organisation=org,
        plan=Plan.objects.get(code="standard"),
        anchor_at=PERIOD_START - timedelta(days=61),
    )
    counters(
        org, {date(2026, 10, 29): 700, date(2026, 10, 31): 700}, PERIOD_START - timedelta(days=31)
    )
    counters(org, {date(2026, 11, 1): 700, date(2026, 11, 2): 700})
    now = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)  # window 27 Oct .. 2 Nov
    subscription = subscription_for(organisation=org)
    subscription.organisation = org
    summary = usage_summary(subscription=subscription, now=now)
    assert summary.used == 1_400
    assert (summary.projection.daily_average, summary.projection.window_days) == (400, 7)
    assert summary.projection.projected == 1_400 + 400 * 28


def test_a_young_subscription_averages_its_own_days(org):
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    counters(org, {date(2026, 11, 1): 300, date(2026, 11, 2): 900, date(2026, 11, 3): 50})
    now = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    subscription = subscription_for(organisation=org)
    subscription.organisation = org
    summary = usage_summary(subscription=subscription, now=now)
    # Anchor day 1 Nov: the window is 1..2 Nov, 1,200 over 2 days.
    assert (summary.projection.daily_average, summary.projection.window_days) == (600, 2)
    assert summary.projection.projected == 1_250 + 600 * 28


def test_none_on_the_first_day(org):
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    subscription = subscription_for(organisation=org)
    subscription.organisation = org
    summary = usage_summary(subscription=subscription, now=PERIOD_START + timedelta(hours=3))
    assert summary.projection is None
    assert summary.projected_percent is None
