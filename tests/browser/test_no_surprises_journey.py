"""No surprises on the bill, in a real browser: an Admin adds a 50% usage alert and the
accounts-payable mailbox as a billing recipient, the mailbox confirms from its email, and usage
crossing 50% emails both. The Overview and Settings > Subscription show the next invoice."""

import json

import pytest
from django.core import mail
from playwright.sync_api import expect

from accounts.audit import Actor
from subscriptions.models import Plan
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.browser.helpers import link_in_mail
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.services import api_key_create

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

ALERT_SUBJECT = "Clear Co has used 50% of its monthly transactions"


def post_usage(page, portal, *, plain, flow, count, key, at):
    records = [
        {
            "flow_id": str(flow.public_id),
            "record_key": f"{key}-{n}",
            "status": "success",
            "direction": "outbound",
            "synced_at": at,
        }
        for n in range(count)
    ]
    response = page.request.post(
        f"{portal}/api/v1/sync-info",
        data=json.dumps({"records": records}),
        headers={
            "Authorization": f"Bearer {plain}",
            "Idempotency-Key": key,
            "Content-Type": "application/json",
        },
    )
    assert response.status == 201, response.text()


def test_a_50_percent_alert_reaches_the_admin_and_the_confirmed_recipient(new_page, portal):
    from django.utils import timezone

    now = timezone.now()
    Plan.objects.filter(code="standard").update(monthly_transactions=200)
    org = OrganisationFactory(name="Clear Co", slug="clear-co")
    admin = UserFactory(email="boss@clear.test")
    MembershipFactory(organisation=org, user=admin, role="admin")
    SubscriptionFactory(
        organisation=org,
        plan=Plan.objects.get(code="standard"),
        anchor_at=now - timezone.timedelta(days=3),
    )
    environment = EnvironmentFactory(organisation=org, name="Production")
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    _, plain = api_key_create(environment=environment, actor=Actor(user=admin), name="rt", now=now)

    page = new_page()
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill("boss@clear.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()

    # The Overview answers: the plan, and the next invoice with its date.
    page.goto(f"{portal}/o/clear-co/")
    expect(page.get_by_role("heading", name="Next invoice")).to_be_visible()
    expect(page.locator(".upcoming-total")).to_contain_text("$")

    # A 50% alert, from Settings > Subscription.
    page.goto(f"{portal}/o/clear-co/settings/subscription/")
    expect(page.get_by_role("region", name="Upcoming invoice")).to_contain_text(
        "Standard plan, monthly subscription"
    )
    page.get_by_role("region", name="Usage").get_by_role("link", name="Manage usage alerts").click()
    page.get_by_label("Alert at (% of the monthly limit)").fill("50")
    page.get_by_role("button", name="Add alert").click()
    expect(page.get_by_text("Usage alert at 50% added.")).to_be_visible()

    # The accounts-payable mailbox, confirmed from its email without an account.
    page.goto(f"{portal}/o/clear-co/settings/billing/recipients/")
    page.get_by_label("Email address").fill("ap@clear.test")
    page.get_by_role("button", name="Send confirmation link").click()
    expect(page.get_by_text("We emailed a confirmation link to ap@clear.test.")).to_be_visible()
    mailbox = new_page()
    mailbox.goto(link_in_mail(mail.outbox[-1], "/billing-recipients/confirm/"))
    mailbox.get_by_role("button", name="Confirm ap@clear.test").click()
    expect(
        mailbox.get_by_text("ap@clear.test now receives the billing emails of Clear Co.")
    ).to_be_visible()

    # 60 transactions (30%): no alert. Then 50 more (55%): the 50% alert, to both.
    mail.outbox.clear()
    post_usage(page, portal, plain=plain, flow=flow, count=60, key="batch-1", at=now.isoformat())
    assert [m.subject for m in mail.outbox] == []
    post_usage(page, portal, plain=plain, flow=flow, count=50, key="batch-2", at=now.isoformat())
    alerts = [m for m in mail.outbox if m.subject == ALERT_SUBJECT]
    assert sorted(address for m in alerts for address in m.to) == sorted(
        ["ap@clear.test", "boss@clear.test", org.primary_email]
    )
    assert "50%" in alerts[0].body
    # Resent, the batch counts once and emails no one again.
    post_usage(page, portal, plain=plain, flow=flow, count=50, key="batch-2", at=now.isoformat())
    assert len([m for m in mail.outbox if m.subject == ALERT_SUBJECT]) == 3

    page.goto(f"{portal}/o/clear-co/settings/subscription/")
    usage = page.get_by_role("region", name="Usage")
    expect(usage).to_contain_text("This month's transactions: 110 of 200 (55%)")
    expect(usage).to_contain_text("50% alert emailed on")
