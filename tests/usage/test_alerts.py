"""Usage alerts the customer chooses (usage/alerts.py, docs/architecture.md#usage-alerts): the
thresholds beside 80% and 100%, the forecast alert, each claimed once per usage month."""

import json
import threading
from datetime import UTC, date, datetime, timedelta
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.audit import Actor
from accounts.models import AuditEvent, OutgoingEmail
from core.errors import ServiceError
from subscriptions.models import Plan
from tests.accounts.factories import MembershipFactory, OrganisationFactory
from tests.subscriptions.factories import (
    PERIOD_START,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.alerts import (
    PERCENT_RANGE,
    TOO_MANY,
    alert_threshold_add,
    alert_threshold_remove,
    forecast_alert_switch,
    forecast_alerts_send,
)
from usage.models import AlertSettings, AlertThreshold, UsageAlert, UsageCounter
from usage.services import api_key_create

pytestmark = pytest.mark.django_db

# Inside the factory's usage month 1 Nov 2026 09:00 UTC - 1 Dec 2026 09:00 UTC: 19 days left.
NOW = datetime(2026, 11, 12, 9, 0, tzinfo=UTC)
RECIPIENTS = 2  # the primary email and the Admin


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
    return {"subscription": subscription, "flow": flow, "plain": plain, "actor": Actor(user=admin)}


def limit_to(transactions: int) -> None:
    Plan.objects.filter(code="standard").update(monthly_transactions=transactions)


def post(setup, count: int, *, key: str, client=None):
    records = [
        {
            "flow_id": str(setup["flow"].public_id),
            "record_key": f"{key}-{n}",
            "status": "success",
            "direction": "outbound",
            "synced_at": NOW.isoformat(),
        }
        for n in range(count)
    ]
    response = (client or Client()).post(
        "/api/v1/sync-info",
        data=json.dumps({"records": records}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {setup['plain']}",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    assert response.status_code == 201, response.content
    return response


def add(org, setup, *percents):
    for percent in percents:
        alert_threshold_add(organisation=org, actor=setup["actor"], percent=percent, now=NOW)


def sent(template="usage_alert"):
    return [m for m in mail.outbox if m.to and template_of(m) == template]


def template_of(message):
    subject = message.subject
    if "is on track to go over" in subject:
        return "usage_forecast"
    if "of its monthly transactions" in subject:
        return "usage_alert"
    return "other"


def counters(org, per_day: dict[date, int], month_start=PERIOD_START):
    UsageCounter.objects.bulk_create(
        UsageCounter(organisation=org, month_start=month_start, day=day, transactions=n)
        for day, n in per_day.items()
    )


# Thresholds after each batch ------------------------------------------------------------------


def test_each_threshold_is_emailed_once_including_above_the_limit(org, setup, committed):
    limit_to(100)
    add(org, setup, 50, 150)
    with committed():
        post(setup, 49, key="a")
        post(setup, 1, key="b")  # 50%
        post(setup, 30, key="c")  # 80%
        post(setup, 20, key="d")  # 100%
        post(setup, 49, key="e")  # 149%: nothing
        post(setup, 1, key="f")  # 150%
        post(setup, 60, key="g")  # 210%: nothing more
    subjects = [m.subject for m in sent()]
    assert subjects == [
        f"Acme Trading has used {percent}% of its monthly transactions"
        for percent in (50, 80, 100, 150)
        for _ in range(RECIPIENTS)
    ]
    above = sent()[-1].body
    assert (
        "Acme Trading has synced 150 records this usage month, reaching 150% of the 100 "
        "transactions included in the Standard plan (50% above the limit)." in above
    )
    assert "Your ProcessFlows keep running." in above
    fifty = " ".join(sent()[0].body.split())
    assert "has synced 50 records this usage month, reaching 50% of the 100 transactions" in fifty
    assert "above the limit)" not in fifty
    assert list(
        UsageAlert.objects.filter(organisation=org)
        .order_by("threshold")
        .values_list("kind", "threshold", "transactions")
    ) == [
        ("threshold", 50, 50),
        ("threshold", 80, 80),
        ("threshold", 100, 100),
        ("threshold", 150, 150),
    ]


def test_a_batch_past_several_thresholds_sends_one_email(org, setup, committed):
    limit_to(100)
    add(org, setup, 30)
    with committed():
        post(setup, 120, key="a")
    assert [m.subject for m in sent()] == [
        "Acme Trading has used 100% of its monthly transactions"
    ] * RECIPIENTS
    body = " ".join(sent()[0].body.split())
    assert "This email also stands for your 30% and 80% alerts, passed in the same batch." in body
    assert sorted(UsageAlert.objects.values_list("threshold", flat=True)) == [30, 80, 100]


def test_a_removed_threshold_is_not_emailed_and_a_readded_one_not_twice(org, setup, committed):
    limit_to(100)
    add(org, setup, 20, 40)
    with committed():
        post(setup, 20, key="a")  # 20%
    twenty = AlertThreshold.objects.get(percent=20)
    alert_threshold_remove(organisation=org, actor=setup["actor"], threshold=twenty, now=NOW)
    forty = AlertThreshold.objects.get(percent=40)
    alert_threshold_remove(organisation=org, actor=setup["actor"], threshold=forty, now=NOW)
    add(org, setup, 20)  # the 20% alert already went out this usage month
    with committed():
        post(setup, 25, key="b")  # 45%
    assert [m.subject for m in sent()] == [
        "Acme Trading has used 20% of its monthly transactions"
    ] * RECIPIENTS
    assert list(UsageAlert.objects.values_list("threshold", flat=True)) == [20]


def test_the_check_adds_no_query_to_a_batch_until_an_alert_is_due(org, setup):
    limit_to(1_000)
    post(setup, 1, key="warm")
    with CaptureQueriesContext(connection) as without:
        post(setup, 1, key="a")
    add(org, setup, 10, 20, 30, 40, 50, 60)  # the most there can be
    with CaptureQueriesContext(connection) as with_six:
        post(setup, 1, key="b")
    assert len(with_six.captured_queries) == len(without.captured_queries)
    # An alert due: one INSERT claims every threshold reached (10% here) at once.
    with CaptureQueriesContext(connection) as due:
        post(setup, 100, key="c")
    claims = [q["sql"] for q in due.captured_queries if "INSERT INTO usage_usagealert" in q["sql"]]
    assert len(claims) == 1
    # Once claimed, a later batch does not try again: the claims come with the subscription.
    with CaptureQueriesContext(connection) as after:
        post(setup, 1, key="d")
    assert len(after.captured_queries) == len(without.captured_queries)
    assert not any("INSERT INTO usage_usagealert" in q["sql"] for q in after.captured_queries)
    # The forecast opt-in, not yet sent and computable: one query, the projection's window.
    forecast_alert_switch(organisation=org, actor=setup["actor"], on=True, now=NOW)
    with CaptureQueriesContext(connection) as forecast:
        post(setup, 1, key="e")
    assert len(forecast.captured_queries) == len(without.captured_queries) + 1


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_concurrent_batches_crossing_a_custom_threshold_send_one_email(time_machine):
    time_machine.move_to(NOW, tick=False)
    org = OrganisationFactory()
    admin = MembershipFactory(organisation=org, role="admin").user
    limit_to(100)
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    environment = EnvironmentFactory(organisation=org)
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    _, plain = api_key_create(environment=environment, actor=Actor(user=admin), name="k", now=NOW)
    setup = {"flow": flow, "plain": plain}
    alert_threshold_add(organisation=org, actor=Actor(user=admin), percent=50, now=NOW)
    post(setup, 45, key="warm")
    barrier = threading.Barrier(2)
    codes = []

    def send(name):
        try:
            barrier.wait()
            codes.append(post(setup, 10, key=name).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(f"t{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [201, 201]
    assert list(
        UsageAlert.objects.filter(organisation=org).values_list("threshold", flat=True)
    ) == [50]
    emails = OutgoingEmail.objects.filter(organisation=org, template="usage_alert")
    assert sorted(emails.values_list("to_email", flat=True)) == sorted(
        [org.primary_email, admin.email]
    )
    assert {e.subject for e in emails} == {f"{org.name} has used 50% of its monthly transactions"}


# Thresholds: adding and removing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "message"),
    [
        (9, PERCENT_RANGE),
        (501, PERCENT_RANGE),
        (0, PERCENT_RANGE),
        (80, "The 80% alert is always on: choose another percentage."),
        (100, "The 100% alert is always on: choose another percentage."),
        (60, "There is already a 60% alert."),
    ],
)
def test_bad_thresholds_are_refused_and_nothing_is_written(org, setup, percent, message):
    add(org, setup, 60)
    audits = AuditEvent.objects.count()
    with pytest.raises(ServiceError) as refused:
        add(org, setup, percent)
    assert (refused.value.message, refused.value.field) == (message, "percent")
    assert list(AlertThreshold.objects.values_list("percent", flat=True)) == [60]
    assert AuditEvent.objects.count() == audits


def test_at_most_eight_alerts_in_all(org, setup):
    add(org, setup, 10, 20, 30, 40, 50, 60)
    with pytest.raises(ServiceError) as refused:
        add(org, setup, 70)
    assert refused.value.message == TOO_MANY
    assert TOO_MANY.startswith("You already have 8 usage alerts, the most there can be")
    assert AlertThreshold.objects.filter(organisation=org).count() == 6
    # Another organisation's thresholds do not count.
    other = OrganisationFactory()
    alert_threshold_add(organisation=other, actor=Actor(user=None), percent=70, now=NOW)


def test_adding_and_removing_are_audited(org, setup, admin):
    add(org, setup, 150)
    threshold = AlertThreshold.objects.get(organisation=org)
    assert (threshold.percent, threshold.created_by, threshold.created_at) == (150, admin, NOW)
    alert_threshold_remove(organisation=org, actor=setup["actor"], threshold=threshold, now=NOW)
    with pytest.raises(ServiceError) as twice:
        alert_threshold_remove(organisation=org, actor=setup["actor"], threshold=threshold, now=NOW)
    assert twice.value.message == "The 150% alert was already removed."
    events = AuditEvent.objects.filter(organisation=org, action__startswith="usage_alert.")
    assert [(e.action, e.actor, e.target_label, e.changes) for e in events.order_by("pk")] == [
        (
            "usage_alert.threshold_added",
            admin,
            "150% usage alert",
            {"percent": {"old": None, "new": 150}},
        ),
        (
            "usage_alert.threshold_removed",
            admin,
            "150% usage alert",
            {"percent": {"old": 150, "new": None}},
        ),
    ]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_tabs_adding_the_last_allowed_threshold_make_no_ninth():
    org = OrganisationFactory()
    for percent in (10, 20, 30, 40, 50):
        alert_threshold_add(organisation=org, actor=Actor(user=None), percent=percent, now=NOW)
    barrier = threading.Barrier(2)
    outcomes = []

    def create(percent):
        try:
            barrier.wait()
            alert_threshold_add(organisation=org, actor=Actor(user=None), percent=percent, now=NOW)
            outcomes.append("added")
        except ServiceError as error:
            outcomes.append(error.message)
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(p,)) for p in (60, 70)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == sorted(["added", TOO_MANY])
    assert AlertThreshold.objects.filter(organisation=org).count() == 6


def test_the_forecast_switch_is_audited_once_per_change(org, setup, admin):
    assert forecast_alert_switch(organisation=org, actor=setup["actor"], on=False, now=NOW) is False
    assert forecast_alert_switch(organisation=org, actor=setup["actor"], on=True, now=NOW) is True
    assert forecast_alert_switch(organisation=org, actor=setup["actor"], on=True, now=NOW) is False
    assert AlertSettings.objects.get(organisation=org).forecast is True
    assert forecast_alert_switch(organisation=org, actor=setup["actor"], on=False, now=NOW) is True
    events = AuditEvent.objects.filter(organisation=org, action__startswith="usage_alert.")
    assert [(e.action, e.changes) for e in events.order_by("pk")] == [
        ("usage_alert.forecast_on", {"forecast": {"old": False, "new": True}}),
        ("usage_alert.forecast_off", {"forecast": {"old": True, "new": False}}),
    ]
    settings = AlertSettings.objects.get(organisation=org)
    assert (settings.forecast, settings.changed_by, settings.changed_at) == (False, admin, NOW)


# The forecast alert ---------------------------------------------------------------------------


def test_the_forecast_alert_after_a_batch_once_per_month(org, setup, committed):
    # 1-11 Nov at 2,000 a day: 22,000 so far; the window (5-11 Nov) averages 2,000 a day.
    counters(org, {date(2026, 11, day): 2_000 for day in range(1, 12)})
    forecast_alert_switch(organisation=org, actor=setup["actor"], on=True, now=NOW)
    with committed():
        post(setup, 5, key="a")
        post(setup, 5, key="b")
    [first, *others] = sent("usage_forecast")
    assert len(others) == RECIPIENTS - 1
    assert first.subject == "Acme Trading is on track to go over its monthly transactions"
    body = " ".join(first.body.split())
    # 22,005 + 2,000 a day for the 19 days left.
    assert (
        "At its current pace, Acme Trading will sync about 60,005 records by the end of this "
        "usage month on 1 December 2026: 120% of the 50,000 transactions included in the "
        "Standard plan. So far this month: 22,005." in body
    )
    assert (
        "How we project: the transactions so far, plus the average of the last 7 full days "
        "(2,000 a day) for the time left in the month." in body
    )
    # 10,005 above the limit: 11 started thousands at $5.00.
    assert (
        "At that pace the overage would be about $55.00: 11 started thousands above the limit "
        "at $5.00 each." in body
    )
    assert "/o/acme/settings/subscription/usage-alerts/" in body
    [alert] = UsageAlert.objects.filter(organisation=org)
    assert (alert.kind, alert.threshold, alert.transactions, alert.projected) == (
        "forecast",
        100,
        22_005,
        60_005,
    )
    assert sent() == []  # no threshold reached


def test_no_forecast_alert_when_off_below_the_limit_or_already_over(org, setup, committed):
    counters(org, {date(2026, 11, day): 2_000 for day in range(1, 12)})
    with committed():
        post(setup, 5, key="off")
    assert sent("usage_forecast") == []
    forecast_alert_switch(organisation=org, actor=setup["actor"], on=True, now=NOW)
    limit_to(100_000)  # 22,010 + 38,000 stays below
    with committed():
        post(setup, 5, key="below")
    limit_to(20_000)  # already over: the 100% alert says it
    with committed():
        post(setup, 5, key="over")
    assert sent("usage_forecast") == []
    assert not UsageAlert.objects.filter(kind="forecast").exists()


def test_no_forecast_on_the_subscriptions_first_day(org, setup, committed):
    setup["subscription"].anchor_at = NOW - timedelta(hours=2)
    setup["subscription"].save(update_fields=["anchor_at"])
    limit_to(10)
    forecast_alert_switch(organisation=org, actor=setup["actor"], on=True, now=NOW)
    with committed():
        post(setup, 5, key="a")  # 50%, and no full day to average
    assert sent("usage_forecast") == []


def heavy_day_world(org, setup):
    """1-11 Nov at 1,000 a day and 40,000 on the 12th, against a limit of 100,000."""
    limit_to(100_000)
    counters(
        org, {date(2026, 11, day): 1_000 for day in range(1, 12)} | {date(2026, 11, 12): 40_000}
    )
    forecast_alert_switch(organisation=org, actor=setup["actor"], on=True, now=NOW)


def test_the_job_sends_the_forecast_when_the_window_moves_and_only_once(org, setup, committed):
    heavy_day_world(org, setup)
    # The 12th, 10:00: 51,000 + 1,000 a day for ~19 days stays below.
    with committed():
        assert forecast_alerts_send(now=NOW + timedelta(hours=1)) == 0
    # The 13th, 01:00: the window (6-12 Nov) now holds the heavy day: 6,571 a day.
    later = datetime(2026, 11, 13, 1, 0, tzinfo=UTC)
    with committed():
        assert forecast_alerts_send(now=later) == 1
        assert forecast_alerts_send(now=later) == 0
        out = StringIO()
        call_command("tick", "--now", later.isoformat(), "--job", "forecast_alerts", stdout=out)
    assert "0 forecast alert(s) sent" in out.getvalue()
    [email, *_] = sent("usage_forecast")
    assert len(sent("usage_forecast")) == RECIPIENTS
    assert "(6,571 a day)" in email.body
    # 51,000 + 46,000 / 7 a day for the 18 days and 8 hours left.
    assert UsageAlert.objects.get(kind="forecast").projected == 171_476


def test_the_job_skips_the_opted_out_and_the_not_serving(org, setup, committed):
    heavy_day_world(org, setup)
    later = datetime(2026, 11, 13, 1, 0, tzinfo=UTC)
    forecast_alert_switch(organisation=org, actor=setup["actor"], on=False, now=NOW)
    assert forecast_alerts_send(now=later) == 0
    forecast_alert_switch(organisation=org, actor=setup["actor"], on=True, now=NOW)
    setup["subscription"].status = "suspended"
    setup["subscription"].save(update_fields=["status"])
    assert forecast_alerts_send(now=later) == 0
    assert not UsageAlert.objects.exists()
