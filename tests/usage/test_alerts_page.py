"""Settings > Subscription > Usage alerts (Admins), and the "Usage alerts" part of the Usage
section on Settings > Subscription."""

import re
from datetime import UTC, datetime

import pytest
from dateutil.relativedelta import relativedelta
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.audit import Actor
from accounts.models import AuditEvent
from subscriptions.models import Plan
from tests.subscriptions.factories import PERIOD_START, SubscriptionFactory
from usage.alerts import PERCENT_RANGE, alert_threshold_add, forecast_alert_switch
from usage.models import AlertSettings, AlertThreshold, UsageAlert

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 12, 14, 0, tzinfo=UTC)


@pytest.fixture
def now(time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


@pytest.fixture
def subscription(org, now):
    return SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))


def url(org, name="usage:alerts", *args):
    return reverse(name, args=[org.slug, *args])


def text(body: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def state(org):
    return (
        sorted(AlertThreshold.objects.filter(organisation=org).values_list("percent", flat=True)),
        AlertSettings.objects.filter(organisation=org, forecast=True).exists(),
        AuditEvent.objects.filter(organisation=org).count(),
    )


def add(org, *percents, actor=None):
    for percent in percents:
        alert_threshold_add(
            organisation=org, actor=actor or Actor(user=None), percent=percent, now=NOW
        )


def test_the_page_lists_the_thresholds_and_the_forecast(client_for, org, admin, subscription):
    add(org, 150, 50, actor=Actor(user=admin))
    UsageAlert.objects.create(
        organisation=org,
        month_start=PERIOD_START,
        month_end=PERIOD_START + relativedelta(months=1),
        threshold=50,
        sent_at=NOW,
        transactions=25_000,
    )
    response = client_for(admin).get(url(org))
    assert response.status_code == 200
    body = text(response.content.decode())
    assert f"They go to {org.primary_email} and admin@acme.test." in body
    rows = re.findall(r"<tr>(.*?)</tr>", response.content.decode(), re.S)[1:]
    assert [text(row) for row in rows] == [
        "50% 25,000 Emailed 12 Nov 12 Nov 2026 by admin@acme.test Remove the 50% alert",
        "80% Always on 40,000 Not reached Fixed",
        "100% Always on 50,000 Not reached Fixed",
        "150% 75,000 Not reached 12 Nov 2026 by admin@acme.test Remove the 150% alert",
    ]
    assert "you can add up to 6 of your own, from 10% to 500% of the limit" in body
    assert "Forecast alert Off" in body
    assert "Switch on the forecast alert" in body


def test_add_a_threshold(client_for, org, admin, subscription):
    response = client_for(admin).post(url(org, "usage:alert_threshold_add"), {"percent": "90"})
    assert response.status_code == 302
    assert response["Location"] == url(org)
    assert state(org)[0] == [90]
    page = client_for(admin).get(url(org)).content.decode()
    assert "Usage alert at 90% added." in page


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", PERCENT_RANGE),
        ("12.5", PERCENT_RANGE),
        ("abc", PERCENT_RANGE),
        ("9", PERCENT_RANGE),
        ("501", PERCENT_RANGE),
        ("80", "The 80% alert is always on: choose another percentage."),
        ("100", "The 100% alert is always on: choose another percentage."),
        ("60", "There is already a 60% alert."),
    ],
)
def test_bad_input_is_a_field_error_and_nothing_is_saved(
    client_for, org, admin, subscription, value, message
):
    add(org, 60)
    before = state(org)
    response = client_for(admin).post(url(org, "usage:alert_threshold_add"), {"percent": value})
    assert response.status_code == 400
    body = response.content.decode()
    field = re.search(r'<div class="field field--error">(.*?)</div>', body, re.S)
    assert field is not None
    assert message in text(field.group(1))
    assert state(org) == before


def test_a_ninth_alert_is_refused(client_for, org, admin, subscription):
    add(org, 10, 20, 30, 40, 50, 60)
    client = client_for(admin)
    page = text(client.get(url(org)).content.decode())
    assert "You have 8 usage alerts, the most there can be." in page
    assert "Add alert" not in page
    before = state(org)
    response = client.post(url(org, "usage:alert_threshold_add"), {"percent": "70"})
    assert response.status_code == 400
    assert "You already have 8 usage alerts, the most there can be" in text(
        response.content.decode()
    )
    assert state(org) == before


def test_remove_a_threshold(client_for, org, admin, subscription):
    add(org, 50)
    threshold = AlertThreshold.objects.get(organisation=org)
    client = client_for(admin)
    response = client.post(url(org, "usage:alert_threshold_remove", threshold.public_id))
    assert response["Location"] == url(org)
    assert state(org)[0] == []
    assert "Usage alert at 50% removed." in client.get(url(org)).content.decode()
    # Again (another tab): the threshold is gone.
    again = client.post(url(org, "usage:alert_threshold_remove", threshold.public_id))
    assert again.status_code == 404


def test_another_organisations_threshold_is_404_and_untouched(
    client_for, org, admin, other_org, subscription
):
    add(other_org, 50)
    theirs = AlertThreshold.objects.get(organisation=other_org)
    before = state(other_org)
    response = client_for(admin).post(url(org, "usage:alert_threshold_remove", theirs.public_id))
    assert response.status_code == 404
    assert state(other_org) == before


def test_another_organisations_admin_gets_404(client_for, org, outsider, subscription):
    add(org, 50)
    before = state(org)
    client = client_for(outsider)
    assert client.get(url(org)).status_code == 404
    assert client.post(url(org, "usage:alert_threshold_add"), {"percent": "90"}).status_code == 404
    assert client.post(url(org, "usage:forecast_alert"), {"forecast": "on"}).status_code == 404
    assert state(org) == before


@pytest.mark.parametrize("role", ["member", "billing_user"])
def test_members_and_billing_contacts_cannot_change_them(
    request, client_for, org, subscription, role
):
    add(org, 50)
    threshold = AlertThreshold.objects.get(organisation=org)
    before = state(org)
    client = client_for(request.getfixturevalue(role))
    assert client.get(url(org)).status_code == 403
    assert client.post(url(org, "usage:alert_threshold_add"), {"percent": "90"}).status_code == 403
    remove = url(org, "usage:alert_threshold_remove", threshold.public_id)
    assert client.post(remove).status_code == 403
    assert client.post(url(org, "usage:forecast_alert"), {"forecast": "on"}).status_code == 403
    assert state(org) == before


def test_switch_the_forecast_alert_on_and_off(client_for, org, admin, subscription):
    client = client_for(admin)
    response = client.post(url(org, "usage:forecast_alert"), {"forecast": "on"})
    assert response["Location"] == url(org)
    page = client.get(url(org)).content.decode()
    assert "The forecast alert is on." in page
    assert "Forecast alert On" in text(page)
    assert "Switch off the forecast alert" in page
    client.post(url(org, "usage:forecast_alert"), {"forecast": "on"})  # a resubmitted form
    assert AuditEvent.objects.filter(action="usage_alert.forecast_on").count() == 1
    client.post(url(org, "usage:forecast_alert"), {"forecast": "off"})
    assert state(org)[1] is False
    before = state(org)
    bad = client.post(url(org, "usage:forecast_alert"), {"forecast": "maybe"})
    assert bad.status_code == 400
    assert "Choose whether the forecast alert is on or off." in bad.content.decode()
    assert state(org) == before


def test_the_page_costs_the_same_queries_with_more_thresholds(client_for, org, admin, subscription):
    client = client_for(admin)
    client.get(url(org))
    with CaptureQueriesContext(connection) as none:
        client.get(url(org))
    add(org, 10, 20, 30, 40, 50, 60)
    forecast_alert_switch(organisation=org, actor=Actor(user=None), on=True, now=NOW)
    with CaptureQueriesContext(connection) as six:
        body = client.get(url(org)).content.decode()
    assert "Remove the 60% alert" in text(body)
    assert len(six.captured_queries) == len(none.captured_queries)


# The Usage section on Settings > Subscription -------------------------------------------------


def usage_alerts_part(body: str) -> str:
    match = re.search(r'<h3 class="usage-alerts-heading">(.*?)</section>', body, re.S)
    assert match
    return text(match.group(1))


def test_the_usage_section_says_which_alerts_and_links_admins(
    client_for, org, admin, billing_user, subscription
):
    client = client_for(admin)
    settings_url = reverse("subscriptions:settings", args=[org.slug])
    part = usage_alerts_part(client.get(settings_url).content.decode())
    assert (
        "No alert this month. Admins, Billing contacts and billing recipients get one email at "
        "80% and 100% of "
        "the limit, once per usage month each. Forecast alert: off. Manage usage alerts" in part
    )
    add(org, 150, 50)
    forecast_alert_switch(organisation=org, actor=Actor(user=None), on=True, now=NOW)
    UsageAlert.objects.create(
        organisation=org,
        month_start=PERIOD_START,
        month_end=PERIOD_START + relativedelta(months=1),
        kind="forecast",
        threshold=100,
        sent_at=NOW,
        transactions=20_000,
        projected=60_000,
    )
    body = client.get(settings_url).content.decode()
    part = usage_alerts_part(body)
    assert "Forecast alert (on track to go over) emailed on 12 Nov" in part
    assert "get one email at 50%, 80%, 100% and 150% of the limit" in part
    assert "Forecast alert: on." in part
    assert f'<a href="{url(org)}">Manage usage alerts</a>' in body
    billing_body = client_for(billing_user).get(settings_url).content.decode()
    assert "Forecast alert: on." in usage_alerts_part(billing_body)
    assert url(org) not in billing_body


def test_the_subscription_page_costs_the_same_queries_with_thresholds(
    client_for, org, admin, subscription
):
    client = client_for(admin)
    settings_url = reverse("subscriptions:settings", args=[org.slug])
    client.get(settings_url)
    with CaptureQueriesContext(connection) as none:
        client.get(settings_url)
    add(org, 10, 20, 30, 40, 50, 60)
    with CaptureQueriesContext(connection) as six:
        body = client.get(settings_url).content.decode()
    assert "10%, 20%, 30%, 40%, 50%, 60%, 80% and 100%" in body
    assert len(six.captured_queries) == len(none.captured_queries)
