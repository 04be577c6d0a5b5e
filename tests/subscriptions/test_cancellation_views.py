"""Settings > Subscription > Cancel Subscription and its undo, the cancellation panel, and the
read-only portal once the subscription has ended (article section 8;
docs/architecture.md#subscriptions)."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Invitation, Membership, OutgoingEmail
from subscriptions.models import BillingCycle, Environment, PlanChange
from tests.subscriptions.factories import SubscriptionFactory, plan

pytestmark = pytest.mark.django_db

PERIOD_END = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
# The subscriptions here are built in the period of November 2026 (SubscriptionFactory): the
# clock stands inside it, after the cancellation of 20 November.
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def now(time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


def url(name, org):
    return reverse(f"subscriptions:{name}", args=[org.slug])


def text(body):
    """The page's text, tags dropped, white space collapsed, no space before punctuation."""
    body = body.decode() if isinstance(body, bytes) else body
    words = " ".join(re.sub(r"<[^>]+>", " ", body).split())
    return re.sub(r" ([.,:;])", r"\1", words)


def flashed(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def state(subscription):
    subscription.refresh_from_db()
    return (
        subscription.status,
        subscription.cancel_at_period_end,
        subscription.canceled_at,
        subscription.cancellation_reason,
        subscription.cancellation_detail,
    )


UNCHANGED = ("active", False, None, "", "")


@pytest.fixture
def cancelled(subscription):
    subscription.cancel_at_period_end = True
    subscription.canceled_at = datetime(2026, 11, 20, 10, tzinfo=UTC)
    subscription.cancellation_reason = "too_expensive"
    subscription.save()
    return subscription


@pytest.fixture
def ended(subscription, time_machine):
    time_machine.move_to(PERIOD_END + timedelta(days=1), tick=False)
    subscription.status = "ended"
    subscription.ended_at = PERIOD_END + timedelta(minutes=5)
    subscription.canceled_at = datetime(2026, 11, 20, 10, tzinfo=UTC)
    subscription.cancellation_reason = "too_expensive"
    subscription.save()
    return subscription


# The reason form -------------------------------------------------------------------------


def test_admin_sees_the_reasons_and_tell_us_more(client_for, org, admin, subscription):
    response = client_for(admin).get(url("cancel", org))
    assert response.status_code == 200
    body = response.content.decode()
    page = text(body)
    assert "Cancel Subscription" in page
    assert "the current period ends on 1 December 2026" in page
    for value, label in [
        ("too_expensive", "It is too expensive"),
        ("missing_features", "It lacks features we need"),
        ("switching", "We are switching to another product"),
        ("not_using", "We do not use it enough"),
        ("technical_issues", "Technical problems"),
        ("project_ended", "Our integration project ended"),
        ("other", "Another reason"),
    ]:
        assert f'type="radio" name="reason" value="{value}"' in body
        assert label in page
    assert "Tell us more" in page
    assert '<textarea name="detail"' in body
    assert f'href="{url("settings", org)}">Keep my subscription</a>' in body
    assert 'aria-current="page">Subscription</a>' in body


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "Choose a reason for cancelling."),
        ({"reason": "bored"}, "Choose one of the reasons for cancelling."),
        (
            {"reason": "other", "detail": "  "},
            "Tell us more: describe your reason for cancelling in a few words.",
        ),
        (
            {"reason": "other", "detail": "  ", "confirm": "1"},
            "Tell us more: describe your reason for cancelling in a few words.",
        ),
    ],
)
def test_bad_reason_is_a_form_error_and_changes_nothing(
    client_for, org, admin, subscription, data, error
):
    response = client_for(admin).post(url("cancel", org), data)
    assert response.status_code == 400
    assert error in text(response.content)
    assert state(subscription) == UNCHANGED
    assert not AuditEvent.objects.exists()


# The confirmation page -------------------------------------------------------------------


def test_the_confirmation_page_says_what_happens_and_when_monthly(
    client_for, org, admin, subscription
):
    response = client_for(admin).post(
        url("cancel", org), {"reason": "switching", "detail": "We move to X"}
    )
    assert response.status_code == 200
    body = response.content.decode()
    page = text(body)
    assert "Cancel your Standard subscription?" in page
    assert "No further charges will be made from now on." in page
    assert (
        "Your service continues until 1 December 2026, the end of the month you have paid for."
        in page
    )
    assert "refund" not in page
    assert "All ProcessFlows stop on that date." in page
    assert (
        "Your data (configurations, ProcessFlows, Sync Info) is kept for 30 days after that, "
        "until 31 December 2026, then permanently deleted." in page
    )
    assert "Export your configurations first" in page
    assert (
        f'<a href="{reverse("retention:privacy", args=[org.slug])}">Privacy &amp; data export</a>'
        in body
    )
    assert "You can undo the cancellation until 1 December 2026" in page
    assert "Your reason We are switching to another product We move to X" in page
    assert '<input type="hidden" name="reason" value="switching"' in body
    assert '<input type="hidden" name="detail" value="We move to X"' in body
    assert '<input type="hidden" name="confirm" value="1">' in body
    assert (
        '<button class="button button--danger" type="submit">Cancel Subscription</button>' in body
    )
    assert f'href="{url("settings", org)}">Keep my subscription</a>' in body
    # Nothing is cancelled until the final button.
    assert state(subscription) == UNCHANGED
    assert not OutgoingEmail.objects.exists()


def test_the_confirmation_page_annual_no_refund_and_a_scheduled_downgrade(client_for, org, admin):
    subscription = SubscriptionFactory(
        organisation=org, plan=plan("enterprise"), billing_cycle=BillingCycle.ANNUAL
    )
    PlanChange.objects.create(
        subscription=subscription,
        kind=PlanChange.Kind.DOWNGRADE,
        status=PlanChange.Status.SCHEDULED,
        from_plan=plan("enterprise"),
        to_plan=plan("professional"),
        billing_cycle=BillingCycle.ANNUAL,
        effective_at=subscription.current_period_end,
    )
    page = text(client_for(admin).post(url("cancel", org), {"reason": "not_using"}).content)
    assert (
        "Your service continues until 1 November 2027, the end of your annual term. "
        "No refund is issued for the unused months." in page
    )
    assert "until 1 December 2027, then permanently deleted" in page
    assert "Your scheduled change to the Professional plan is cancelled too." in page


def test_confirming_cancels_and_returns_to_settings_with_a_message(
    client_for, org, admin, subscription
):
    response = client_for(admin).post(
        url("cancel", org), {"reason": "other", "detail": "Budget freeze", "confirm": "1"}
    )
    assert response.status_code == 302
    assert response["Location"] == url("settings", org)
    assert flashed(response) == [
        "Your subscription is cancelled. No further charges will be made; your service "
        "continues until 1 December 2026. You can undo the cancellation until then."
    ]
    status, flag, canceled_at, reason, detail = state(subscription)
    assert (status, flag, reason, detail) == ("active", True, "other", "Budget freeze")
    assert abs(canceled_at - timezone.now()) < timedelta(minutes=1)
    event = AuditEvent.objects.get(action="subscription.cancelled")
    assert (event.actor, event.ip_address) == (admin, "127.0.0.1")


@pytest.mark.parametrize("method", ["get", "post"])
def test_cancelling_twice_shows_the_service_message_and_changes_nothing(
    client_for, org, admin, cancelled, method
):
    before = state(cancelled)
    response = getattr(client_for(admin), method)(
        url("cancel", org), {"reason": "not_using", "confirm": "1"}
    )
    assert response.status_code == 302
    assert response["Location"] == url("settings", org)
    assert flashed(response) == [
        "Your subscription is already cancelled; it ends on 1 December 2026."
    ]
    assert state(cancelled) == before
    assert not AuditEvent.objects.exists()


def test_without_a_subscription_there_is_nothing_to_cancel(client_for, org, admin):
    response = client_for(admin).get(url("cancel", org))
    assert response.status_code == 302
    assert flashed(response) == ["Your organisation has no subscription to cancel."]


# Undo ------------------------------------------------------------------------------------


def test_undo_clears_the_cancellation(client_for, org, admin, cancelled):
    response = client_for(admin).post(url("cancel_undo", org))
    assert response.status_code == 302
    assert response["Location"] == url("settings", org)
    assert flashed(response) == ["Your subscription continues. It renews on 1 December 2026."]
    assert state(cancelled) == UNCHANGED
    assert AuditEvent.objects.get().action == "subscription.cancellation_undone"


def test_undo_is_post_only(client_for, org, admin, cancelled):
    assert client_for(admin).get(url("cancel_undo", org)).status_code == 405
    assert state(cancelled)[1] is True


def test_undo_after_the_end_says_why(client_for, org, admin, ended):
    before = state(ended)
    response = client_for(admin).post(url("cancel_undo", org))
    assert response.status_code == 302
    assert flashed(response) == [
        "The period ended on 1 December 2026; choose a plan to subscribe again."
    ]
    assert state(ended) == before


# Who may ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["billing_user", "member"])
def test_billing_contacts_and_members_cannot_cancel_or_undo(request, client_for, org, role):
    subscription = SubscriptionFactory(organisation=org)
    client = client_for(request.getfixturevalue(role))
    assert client.get(url("cancel", org)).status_code == 403
    response = client.post(url("cancel", org), {"reason": "not_using", "confirm": "1"})
    assert response.status_code == 403
    assert state(subscription) == UNCHANGED
    subscription.cancel_at_period_end = True
    subscription.save(update_fields=["cancel_at_period_end"])
    assert client.post(url("cancel_undo", org)).status_code == 403
    assert state(subscription)[1] is True
    assert not AuditEvent.objects.exists()


def test_another_organisations_admin_gets_404(client_for, org, outsider, subscription):
    client = client_for(outsider)
    assert client.get(url("cancel", org)).status_code == 404
    assert client.post(url("cancel", org), {"reason": "other", "confirm": "1"}).status_code == 404
    assert client.post(url("cancel_undo", org)).status_code == 404
    assert state(subscription) == UNCHANGED


# The panel on Settings > Subscription ----------------------------------------------------


def panel(org, user):
    request = RequestFactory().get(url("settings", org))
    request.user = user
    membership = Membership.objects.get(organisation=org, user=user)
    # A fresh organisation, as a page gets it: the subscription is not loaded yet.
    org = type(org).objects.get(pk=org.pk)
    return render_to_string(
        "subscriptions/cancellation_panel.html",
        {"current_organisation": org, "current_membership": membership},
        request=request,
    )


def test_panel_of_a_cancelled_subscription(org, admin, billing_user, cancelled):
    body = panel(org, admin)
    page = text(body)
    assert "Your subscription ends on 1 December 2026." in page
    assert "It was cancelled on 20 November 2026" in page
    assert "Your data is deleted on 31 December 2026." in page
    assert f'action="{url("cancel_undo", org)}"' in body
    assert "Undo cancellation</button>" in body

    body = panel(org, billing_user)
    assert "Your subscription ends on 1 December 2026." in text(body)
    assert "Undo cancellation</button>" not in body
    assert "An Admin of Acme Trading can undo the cancellation until then." in text(body)


def test_panel_of_an_ended_subscription(org, admin, billing_user, ended):
    body = panel(org, admin)
    page = text(body)
    assert (
        "Your subscription ended on 1 December 2026. Data will be deleted on 31 December 2026."
        in page
    )
    choose = reverse("billing:choose_plan", args=[org.slug])
    assert f'href="{choose}">Choose a plan</a>' in body
    body = panel(org, billing_user)
    assert "Your subscription ended on 1 December 2026." in text(body)
    assert choose not in body


def test_panel_is_empty_for_a_running_subscription_or_none(org, admin, other_org, outsider):
    assert panel(org, admin).strip() == ""
    SubscriptionFactory(organisation=org, status="past_due")
    assert panel(org, admin).strip() == ""
    # Outside an organisation page there is no organisation at all.
    request = RequestFactory().get("/")
    request.user = admin
    assert (
        render_to_string("subscriptions/cancellation_panel.html", {}, request=request).strip() == ""
    )


# Read-only once ended --------------------------------------------------------------------

ENDED_403 = (
    "Your subscription has ended: your organisation&#x27;s data can be viewed but no longer "
    "changed. Choose a plan to make changes again."
)


def test_after_the_end_changes_are_refused_and_pages_stay_readable(client_for, org, admin, ended):
    client = client_for(admin)
    response = client.post(
        reverse("subscriptions:environment_create", args=[org.slug]),
        {"environment-name": "Staging"},
    )
    assert response.status_code == 403
    assert ENDED_403 in response.content.decode()
    assert not Environment.objects.filter(organisation=org).exists()

    response = client.post(
        reverse("accounts:user_invite", args=[org.slug]),
        {"email": "new@acme.test", "role": "member"},
    )
    assert response.status_code == 403
    assert ENDED_403 in response.content.decode()
    assert not Invitation.objects.exists()

    response = client.post(url("cancel", org), {"reason": "not_using", "confirm": "1"})
    assert response.status_code == 403

    for page in (
        reverse("subscriptions:flows", args=[org.slug]),
        reverse("accounts:users", args=[org.slug]),
        reverse("accounts:user_invite", args=[org.slug]),
    ):
        assert client.get(page).status_code == 200, page


def test_changes_are_allowed_while_cancelled_but_not_yet_ended(client_for, org, admin, cancelled):
    response = client_for(admin).post(
        reverse("subscriptions:environment_create", args=[org.slug]),
        {"environment-name": "Staging"},
    )
    assert response.status_code == 302
    assert Environment.objects.filter(organisation=org, name="Staging").exists()


def test_the_guard_asks_only_on_changes(client_for, org, admin, ended):
    client = client_for(admin)
    users = reverse("accounts:users", args=[org.slug])
    with CaptureQueriesContext(connection) as queries:
        client.get(users)
    assert not [q for q in queries if "subscriptions_subscription" in q["sql"]]
    with CaptureQueriesContext(connection) as queries:
        client.post(reverse("accounts:user_invite", args=[org.slug]), {"email": "x@acme.test"})
    assert len([q for q in queries if "subscriptions_subscription" in q["sql"]]) == 1
