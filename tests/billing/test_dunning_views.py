"""Failed payments in the portal (billing.dunning): the banner on every
organisation page, the dunning timeline and Retry Payment on Settings > Billing > Payment Method,
and Update Card retrying the open invoices."""

import re
import threading
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client, RequestFactory
from django.urls import reverse

from accounts.models import AuditEvent, Membership
from accounts.selectors import membership_for_user
from billing.context_processors import account_state
from billing.models import DunningCase, Invoice, Payment
from devkit.stripe_standin import CHARGE_FAILS, MASTERCARD, confirm_card_setup
from subscriptions.models import ProcessFlow, Subscription
from tests.accounts.factories import MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.helpers import add_card, subscribe
from tests.subscriptions.factories import EnvironmentFactory, ProcessFlowFactory

pytestmark = pytest.mark.django_db

RENEWAL = datetime(2026, 2, 28, 10, 0, tzinfo=UTC)  # the first renewal after START
DUE = "$982.77"  # Professional monthly, USD, with tax: the renewal invoice left open


def tick(at):
    call_command("tick", "--now", at.isoformat(), stdout=StringIO())


def url(name, org):
    return reverse(f"billing:{name}", args=[org.slug])


def dashboard(org):
    return reverse("portal:overview", args=[org.slug])


def status(org):
    return Subscription.objects.get(organisation=org).status


def flows(org):
    return sorted(
        ProcessFlow.objects.filter(organisation=org).values_list("status", "pause_reason")
    )


def text(response) -> str:
    """The page's text, whitespace collapsed, tags dropped."""
    html = response.content.decode()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def banner(response) -> str:
    match = re.search(
        r'<div class="account-banner[^"]*"[^>]*>(.*?)</div>\s*</div>',
        response.content.decode(),
        re.S,
    )
    if match is None:
        return ""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", match.group(1))).strip()


def client_secret_in(response) -> str:
    match = re.search(r'data-client-secret="([^"]+)"', response.content.decode())
    assert match, "no card form on the page"
    return match.group(1)


@pytest.fixture
def failing(subscribed, org, admin):
    """Professional since START; the card on file now fails every charge; two running flows
    and one a user paused."""
    environment = EnvironmentFactory(organisation=org)
    ProcessFlowFactory.create_batch(2, organisation=org, environment=environment)
    ProcessFlowFactory(
        organisation=org, environment=environment, status="paused", pause_reason="user"
    )
    add_card(org, number=CHARGE_FAILS)


def run_schedule(*days):
    for day in days:
        tick(RENEWAL + timedelta(days=day))


# --- The banner -------------------------------------------------------------------------------


def test_past_due_banner_for_admin_and_member(
    failing, org, admin, member, client_for, time_machine
):
    run_schedule(0)
    time_machine.move_to(RENEWAL + timedelta(days=1))
    assert status(org) == "past_due"

    page = client_for(admin).get(dashboard(org))
    assert banner(page) == (
        f"A payment of {DUE} failed. We retry on 3 March 2026. Update card or retry payment "
        "Contact billing support"
    )
    assert 'class="account-banner account-banner--past_due"' in page.content.decode()
    assert f'href="{url("payment_method", org)}">Update card or retry payment</a>' in (
        page.content.decode()
    )

    # Members see no amounts (docs/architecture.md#decision-three-roles-per-organisation).
    page = client_for(member).get(dashboard(org))
    assert banner(page) == (
        "A payment failed. We retry on 3 March 2026. "
        "Ask an Admin of Acme Trading to update the card or retry the payment. "
        "Contact billing support"
    )
    assert "Update card or retry payment" not in page.content.decode()


def test_after_the_second_attempt_the_banner_names_the_final_one(
    failing, org, admin, client_for, time_machine
):
    run_schedule(0, 3)
    time_machine.move_to(RENEWAL + timedelta(days=4))
    page = client_for(admin).get(reverse("subscriptions:flows", args=[org.slug]))
    assert banner(page).startswith(f"A payment of {DUE} failed. We retry on 7 March 2026.")


def test_grace_banner(failing, org, admin, member, client_for, time_machine):
    run_schedule(0, 3, 7)
    time_machine.move_to(RENEWAL + timedelta(days=8))
    assert status(org) == "grace"
    expected = (
        f"Final attempt failed. A payment of {DUE} is still due: your account will be "
        "suspended on 14 March 2026 unless it is paid."
    )
    page = client_for(admin).get(url("invoices", org))
    assert banner(page) == f"{expected} Update card or retry payment Contact billing support"
    assert "account-banner--grace" in page.content.decode()
    page = client_for(member).get(dashboard(org))
    assert banner(page) == (
        "Final attempt failed. A payment is still due: your account will be suspended on "
        "14 March 2026 unless it is paid. "
        "Ask an Admin of Acme Trading to update the card or retry the payment. "
        "Contact billing support"
    )


def test_suspended_banner(failing, org, admin, billing_user, member, client_for, time_machine):
    run_schedule(0, 3, 7, 14)
    time_machine.move_to(RENEWAL + timedelta(days=15))
    assert status(org) == "suspended"
    expected = f"Account suspended: ProcessFlows are paused until {DUE} is paid."
    for user in (admin, billing_user):
        page = client_for(user).get(dashboard(org))
        assert banner(page) == f"{expected} Update card or retry payment Contact billing support"
        assert 'account-banner--suspended" data-account-banner="suspended" role="alert"' in (
            page.content.decode()
        )
        # Every dunning banner leads to support, the urgent category chosen.
        assert f'href="/o/{org.slug}/support/?category=account_suspended"' in page.content.decode()
    page = client_for(member).get(reverse("subscriptions:flows", args=[org.slug]))
    assert banner(page) == (
        "Account suspended: ProcessFlows are paused until the open invoices are paid. "
        "Ask an Admin of Acme Trading to update the card or retry the payment. "
        "Contact billing support"
    )


def test_no_banner_while_active(subscribed, org, admin, member, client_for):
    for user in (admin, member):
        page = client_for(user).get(dashboard(org))
        assert page.status_code == 200
        assert "account-banner" not in page.content.decode()


def test_the_banner_costs_one_query_when_the_membership_does_not_say_whether_a_case_is_open(
    failing, org, admin, django_assert_num_queries
):
    request = RequestFactory().get("/")
    request.organisation = org
    request.membership = Membership.objects.get(user=admin)
    with django_assert_num_queries(0):
        context = account_state(request)  # lazy: nothing until the template asks
    with django_assert_num_queries(1):
        assert not context["account_state"]
    run_schedule(0)
    context = account_state(request)
    with django_assert_num_queries(1):  # the open case with its subscription and amount due
        assert context["account_state"].status == "past_due"
    assert context["account_state"].amount_due == 98277
    assert account_state(RequestFactory().get("/")) == {}  # not an organisation page


def test_on_an_organisation_page_the_banner_costs_nothing_in_good_standing(
    failing, org, admin, django_assert_num_queries
):
    """tenant_view's membership query already says whether a dunning case is open."""
    request = RequestFactory().get("/")
    request.membership = membership_for_user(user=admin, org_slug=org.slug)
    request.organisation = request.membership.organisation
    with django_assert_num_queries(0):
        assert account_state(request) == {"account_state": None}
    run_schedule(0)
    request.membership = membership_for_user(user=admin, org_slug=org.slug)
    context = account_state(request)
    with django_assert_num_queries(1):
        assert context["account_state"].status == "past_due"


# --- The timeline ------------------------------------------------------------------------------


def rows(response):
    return [(row["step"], row["state"], row["text"]) for row in response.context["dunning"]["rows"]]


def test_timeline_after_day_0(failing, org, billing_user, client_for, time_machine):
    run_schedule(0)
    time_machine.move_to(RENEWAL + timedelta(days=1))
    page = client_for(billing_user).get(url("payment_method", org))
    assert rows(page) == [
        ("day_0", "failed", "Charge failed: Your card was declined."),
        ("day_3", "scheduled", "Second charge attempt, with a reminder email."),
        ("day_7", "scheduled", "Final charge attempt. If it fails, the grace period starts."),
        (
            "day_14",
            "scheduled",
            "Account suspended and every ProcessFlow paused, unless paid by then.",
        ),
    ]
    content = text(page)
    assert f"Amount due {DUE}" in content
    assert f"Suspension in 13 days, on 14 March 2026, unless {DUE} is paid." in content
    assert (
        "Next: Day 3: second attempt on 3 March 2026 (in 2 days). "
        "Second charge attempt, with a reminder email." in content
    )
    assert "Day 0: payment failed 28 Feb 2026 Failed Charge failed: Your card was declined." in (
        content
    )
    assert "Day 3: second attempt 3 Mar 2026 Scheduled" in content
    assert f'action="{url("retry_payment", org)}"' in page.content.decode()
    assert "Retry Payment" in content
    assert "Saving a new card retries the open invoices with it right away." in content


def test_timeline_after_day_3(failing, org, admin, client_for, time_machine):
    run_schedule(0, 3)
    time_machine.move_to(RENEWAL + timedelta(days=3, hours=12))
    page = client_for(admin).get(url("payment_method", org))
    assert rows(page)[:3] == [
        ("day_0", "failed", "Charge failed: Your card was declined."),
        ("day_3", "failed", "Charge failed: Your card was declined. Reminder email sent."),
        ("day_7", "scheduled", "Final charge attempt. If it fails, the grace period starts."),
    ]
    content = text(page)
    assert "Next: Day 7: final attempt on 7 March 2026 (in 3 days)." in content
    assert "Suspension in 10 days" in content


def test_timeline_shows_a_skipped_step_and_the_suspension(
    failing, org, admin, client_for, time_machine
):
    run_schedule(0, 8, 14)  # day 3 missed: the day-8 run skips it
    time_machine.move_to(RENEWAL + timedelta(days=16))
    page = client_for(admin).get(url("payment_method", org))
    assert rows(page) == [
        ("day_0", "failed", "Charge failed: Your card was declined."),
        ("day_3", "skipped", "Skipped: the schedule ran late."),
        ("day_7", "failed", "Charge failed: Your card was declined. Grace period started."),
        ("day_14", "failed", "Account suspended; active ProcessFlows paused."),
    ]
    content = text(page)
    assert "Suspended since 14 March 2026" in content
    assert "Next:" not in content


def test_no_timeline_while_active(subscribed, org, admin, client_for):
    page = client_for(admin).get(url("payment_method", org))
    assert page.context["dunning"] is None
    assert "Retry Payment" not in text(page)
    assert "The new card will be charged on the next billing date." in text(page)


# --- Retry Payment ------------------------------------------------------------------------------


def test_retry_payment_pays_and_removes_the_banner(
    failing, org, billing_user, client_for, time_machine
):
    run_schedule(0, 3, 7, 14)
    add_card(org)  # a working card again
    time_machine.move_to(RENEWAL + timedelta(days=15))
    client = client_for(billing_user)
    response = client.post(url("retry_payment", org))
    assert response.status_code == 302
    assert response["Location"] == url("payment_method", org)
    page = client.get(response["Location"])
    assert f"Payment received: {DUE} paid. Your service is running normally." in text(page)
    assert banner(page) == ""
    assert page.context["dunning"] is None
    assert status(org) == "active"
    assert not Invoice.objects.filter(organisation=org, status="open").exists()
    assert DunningCase.objects.get().status == "resolved"
    assert flows(org) == [("active", ""), ("active", ""), ("paused", "user")]
    assert (
        AuditEvent.objects.filter(action="billing.retry_payment", actor=billing_user).count() == 1
    )


def test_retry_payment_declined_shows_the_processor_message(
    failing, org, admin, client_for, time_machine
):
    run_schedule(0)
    time_machine.move_to(RENEWAL + timedelta(days=1))
    client = client_for(admin)
    response = client.post(url("retry_payment", org), follow=True)
    assert "Your card was declined." in [str(m) for m in response.context["messages"]]
    assert status(org) == "past_due"
    assert Payment.objects.filter(invoice__status="open", status="failed").count() == 2
    assert banner(response).startswith(f"A payment of {DUE} failed.")


def test_retry_payment_with_nothing_due_changes_nothing(subscribed, org, admin, client_for):
    payments = list(Payment.objects.values_list("pk", "status"))
    response = client_for(admin).post(url("retry_payment", org), follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "Nothing is due: every invoice is paid."
    ]
    assert list(Payment.objects.values_list("pk", "status")) == payments
    assert status(org) == "active"
    assert not AuditEvent.objects.filter(action="billing.retry_payment").exists()


def test_retry_payment_is_post_only_and_for_admins_and_billing(
    failing, org, member, outsider, admin, client_for
):
    run_schedule(0)
    payments = Payment.objects.count()
    assert client_for(member).post(url("retry_payment", org)).status_code == 403
    assert client_for(outsider).post(url("retry_payment", org)).status_code == 404
    assert client_for(admin).get(url("retry_payment", org)).status_code == 405
    assert Payment.objects.count() == payments
    assert status(org) == "past_due"
    assert not AuditEvent.objects.filter(action="billing.retry_payment").exists()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_clicks_at_once_charge_once(localstripe):
    org = OrganisationFactory(name="Race Co", slug="race-co")
    admin = UserFactory(email="admin@race.test")
    MembershipFactory(organisation=org, user=admin, role="admin")
    subscribe(org)
    add_card(org, number=CHARGE_FAILS)
    tick(RENEWAL)
    add_card(org)
    invoice = Invoice.objects.get(status="open")
    barrier = threading.Barrier(2)
    answers = []

    def click():
        client = Client()
        client.force_login(admin)
        try:
            barrier.wait()
            answers.append(client.post(url("retry_payment", org)).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [302, 302]
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert invoice.payments.count() == 2  # the day-0 failure and one retry
    charged = [
        pi
        for pi in localstripe.v1.payment_intents.list().data
        if pi["metadata"]["invoice"] == invoice.number and pi["status"] == "succeeded"
    ]
    assert len(charged) == 1
    assert Subscription.objects.get(organisation=org).status == "active"


# --- Update Card while past due ------------------------------------------------------------------


def test_update_card_while_suspended_pays_at_once(failing, org, admin, client_for, time_machine):
    run_schedule(0, 3, 7, 14)
    time_machine.move_to(RENEWAL + timedelta(days=15))
    client = client_for(admin)
    page = client.get(url("payment_method", org))
    setup_intent_id = confirm_card_setup(client_secret_in(page), number=MASTERCARD)
    response = client.post(
        url("payment_method", org), {"setup_intent_id": setup_intent_id}, follow=True
    )
    assert [str(m) for m in response.context["messages"]] == [
        f"Mastercard •••• 4444 saved and the open invoices were paid with it: {DUE} paid. "
        "Your service is running normally."
    ]
    assert banner(response) == ""
    assert status(org) == "active"
    paid = Invoice.objects.get(period_start=RENEWAL)
    assert paid.status == "paid"
    assert paid.payments.get(status="succeeded").payment_method.last4 == "4444"
    assert flows(org) == [("active", ""), ("active", ""), ("paused", "user")]


def test_update_card_while_past_due_with_a_failing_card(
    failing, org, admin, client_for, time_machine
):
    run_schedule(0)
    time_machine.move_to(RENEWAL + timedelta(days=1))
    client = client_for(admin)
    page = client.get(url("payment_method", org))
    setup_intent_id = confirm_card_setup(client_secret_in(page), number=CHARGE_FAILS)
    response = client.post(
        url("payment_method", org), {"setup_intent_id": setup_intent_id}, follow=True
    )
    assert [str(m) for m in response.context["messages"]] == [
        "Visa •••• 0341 saved, but the open invoices could not be paid with it: "
        "Your card was declined."
    ]
    assert status(org) == "past_due"
