"""The Overview (portal.overview, portal.views): plan, status and renewal, usage with its
projection, the next invoice, what needs attention with where it is fixed, the last invoices and
the shortcuts, for each role; Members see no money; the page costs the same number of queries
however much data the organisation has."""

import re
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import Membership
from billing.dunning import ORDER, STEP_DAYS, Step
from billing.models import DunningCase, DunningStep, Invoice, Payment, PaymentMethod
from core.money import SYMBOLS
from sso.models import SsoConfiguration
from subscriptions.models import PlanChange, Subscription
from tests.accounts.factories import MembershipFactory
from tests.billing.factories import issued_invoice
from tests.subscriptions.factories import (
    PERIOD_START,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
    plan,
)
from usage.models import UsageCounter

pytestmark = pytest.mark.django_db

# Inside the period 1 Nov 2026 09:00 UTC - 1 Dec 2026 09:00 UTC of SubscriptionFactory.
NOW = datetime(2026, 11, 12, 14, 0, tzinfo=UTC)
PREVIOUS_MONTH = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
ROLES = ("admin", "billing_user", "member")


@pytest.fixture(autouse=True)
def now(time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


@pytest.fixture
def subscription(org):
    return SubscriptionFactory(organisation=org)


def overview_url(org) -> str:
    return reverse("portal:overview", args=[org.slug])


def page(client, org) -> str:
    response = client.get(overview_url(org))
    assert response.status_code == 200
    return response.content.decode()


def text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def section(html: str, name: str) -> str:
    """The <section> whose class includes `overview-<name>`, or "" when the page has none."""
    match = re.search(rf'<section class="[^"]*overview-{name}\b.*?</section>', html, re.S)
    return match.group(0) if match else ""


def actions(html: str) -> dict[str, str]:
    """{data-action: the item's text and link} of "Needs your attention"."""
    found = re.findall(
        r'<li class="overview-action" data-action="([^"]+)">(.*?)</li>',
        section(html, "attention"),
        re.S,
    )
    return {key: text(body) for key, body in found}


def links(html: str) -> dict[str, str]:
    return {
        text(label): href
        for href, label in re.findall(r'<a [^>]*href="([^"]+)"[^>]*>(.*?)</a>', html)
    }


def shortcuts(html: str) -> list[str]:
    return re.findall(
        r'<a class="button[^"]*" href="[^"]+">([^<]+)</a>', section(html, "shortcuts")
    )


# A currency amount as core.money.format_money prints one: a symbol or an ISO code beside a
# number with two decimals.
_SYMBOLS = "|".join(re.escape(symbol) for symbol in SYMBOLS.values())
MONEY = re.compile(rf"({_SYMBOLS})\s?-?[\d,]+\.\d\d|\d[\d,]*\.\d\d\s?[A-Z]{{3}}\b")


def usage_days(org, subscription, days: int, per_day: int) -> None:
    """`days` days of counters ending yesterday, each in its usage month (a day already
    counted is left as it is)."""
    counters = []
    for offset in range(days):
        day = date(2026, 11, 11) - timedelta(days=offset)
        month_start = PERIOD_START if day >= PERIOD_START.date() else PREVIOUS_MONTH
        counters.append(
            UsageCounter(organisation=org, month_start=month_start, day=day, transactions=per_day)
        )
    UsageCounter.objects.bulk_create(counters, ignore_conflicts=True)


# --- Per role ---------------------------------------------------------------------------------


def test_admin_sees_plan_usage_next_invoice_invoices_and_admin_shortcuts(
    client_for, org, admin, subscription
):
    usage_days(org, subscription, 7, 1_000)
    first = issued_invoice(organisation=org, status=Invoice.Status.PAID, issued_at=PERIOD_START)
    html = page(client_for(admin), org)

    plan_card = text(section(html, "plan"))
    assert plan_card == (
        "Current plan Plan Standard (monthly) Status Active Renewal date 1 December 2026 "
        "ProcessFlows 0 active of 10 Subscription details"
    )
    usage = text(section(html, "usage"))
    assert usage.startswith("Usage this month 7,000 of 50,000 transactions (14%)")
    # 7,000 so far, 1,000 a day for the 18 days 19 hours left: about 25,792.
    assert "Projected by 1 Dec: about 25,792 (51% of the limit)." in usage
    assert '<p class="upcoming-summary">' in section(html, "upcoming")
    invoices = section(html, "invoices")
    assert text(invoices) == (
        f"Recent invoices Invoice History The latest invoices, newest first Invoice Date Total "
        f"Status {first.number} (PDF) 1 Nov 2026 €613.77 Paid"
    )
    assert links(invoices)[f"{first.number} (PDF)"] == reverse(
        "billing:invoice_pdf", args=[org.slug, first.number]
    )
    assert shortcuts(html) == ["Upgrade Plan", "Change Plan", "Update card", "Invite users", "SSO"]
    assert actions(html) == {}
    assert "Nothing needs your attention." in text(section(html, "attention"))


def test_billing_contact_sees_money_and_billing_shortcuts(
    client_for, org, billing_user, subscription
):
    issued_invoice(organisation=org, status=Invoice.Status.PAID, issued_at=PERIOD_START)
    html = page(client_for(billing_user), org)
    assert section(html, "upcoming")
    assert "€613.77" in text(section(html, "invoices"))
    assert shortcuts(html) == ["Update card", "Billing information", "Invoice History"]
    assert "Next step: choose a plan." not in html


def test_member_sees_plan_and_usage_without_money(client_for, org, member, subscription):
    usage_days(org, subscription, 3, 20_000)  # 60,000 of 50,000: overage
    issued_invoice(organisation=org, status=Invoice.Status.PAID, issued_at=PERIOD_START)
    html = page(client_for(member), org)
    assert "Standard" in text(section(html, "plan"))
    assert "Subscription details" not in html
    usage = text(section(html, "usage"))
    assert "60,000 of 50,000 transactions (120%) Limit reached" in usage
    assert "Above the limit: your ProcessFlows keep running." in usage
    assert links(section(html, "usage"))["Sync Info"] == reverse("usage:sync_info", args=[org.slug])
    assert section(html, "upcoming") == ""
    assert section(html, "invoices") == ""
    assert "upcoming-summary" not in html
    assert shortcuts(html) == ["ProcessFlows", "Sync Info"]
    assert MONEY.search(html) is None


def test_the_admin_overage_shows_its_amount(client_for, org, admin, subscription):
    usage_days(org, subscription, 3, 20_000)  # 10 started thousands over, at $5.00 each
    usage = text(section(page(client_for(admin), org), "usage"))
    assert "Overage so far: $50.00." in usage


def test_an_admin_without_a_plan_is_asked_to_choose_one(client_for, org, admin, member):
    html = page(client_for(admin), org)
    assert "Next step: choose a plan." in text(html)
    assert "has no plan yet." in text(section(html, "plan"))
    assert section(html, "usage") == ""
    assert section(html, "upcoming") == ""
    assert "No invoices yet." in text(section(html, "invoices"))
    assert shortcuts(html)[0] == "Choose a plan"
    member_html = page(client_for(member), org)
    assert "Next step: choose a plan." not in member_html
    assert "has no plan yet: an Admin can choose one." in text(section(member_html, "plan"))


def test_the_last_three_invoices_newest_first(client_for, org, admin, subscription):
    numbers = [
        issued_invoice(
            organisation=org,
            status=Invoice.Status.PAID,
            issued_at=PERIOD_START - timedelta(days=30 * months),
        ).number
        for months in range(5)
    ]
    invoices = section(page(client_for(admin), org), "invoices")
    shown = re.findall(r"(INV-\d{4}-\d{6})<span", invoices)
    assert shown == numbers[:3]
    assert links(invoices)["Invoice History"] == reverse("billing:invoices", args=[org.slug])


# --- What needs attention ---------------------------------------------------------------------


def failing(org, subscription, *, status=Subscription.Status.PAST_DUE, steps=(Step.DAY_0,)):
    """An open invoice whose payment failed on day 0, and the schedule's `steps` run since."""
    started = NOW - timedelta(days=1 + STEP_DAYS[steps[-1]])
    Subscription.objects.filter(pk=subscription.pk).update(status=status)
    invoice = issued_invoice(
        organisation=org, subscription=subscription, currency="USD", issued_at=started
    )
    case = DunningCase.objects.create(
        organisation=org, subscription=subscription, started_at=started
    )
    for step in steps:
        DunningStep.objects.create(
            case=case, step=step, ran_at=started + timedelta(days=STEP_DAYS[step])
        )
    return invoice, case


def test_a_failed_payment_needs_attention_with_its_amount_for_those_who_pay(
    client_for, org, admin, member, subscription
):
    invoice, case = failing(org, subscription)
    admin_html = page(client_for(admin), org)
    assert MONEY.search(admin_html)  # the pattern finds the amounts the Member must not see
    item = actions(admin_html)["payment_failed"]
    assert item == (
        f"Payment failed A payment of ${invoice.total / 100:,.2f} failed. "
        "We retry on 14 November 2026. Update card or retry payment"
    )
    member_html = page(client_for(member), org)
    assert actions(member_html)["payment_failed"] == (
        "Payment failed A payment failed. We retry on 14 November 2026. Ask an Admin to pay it."
    )
    assert MONEY.search(member_html) is None

    DunningCase.objects.filter(pk=case.pk).update(status=DunningCase.Status.RESOLVED)
    Subscription.objects.filter(pk=subscription.pk).update(status=Subscription.Status.ACTIVE)
    assert "payment_failed" not in actions(page(client_for(admin), org))


def test_a_suspended_account_needs_attention(client_for, org, billing_user, subscription):
    failing(org, subscription, status=Subscription.Status.SUSPENDED, steps=ORDER)
    item = actions(page(client_for(billing_user), org))["payment_failed"]
    assert item.startswith("Account suspended ProcessFlows are paused until the payment of $")
    assert item.endswith("Update card or retry payment")


def test_a_payment_to_confirm_links_to_confirm_payment(
    client_for, org, admin, member, subscription
):
    invoice = issued_invoice(organisation=org, subscription=subscription, currency="USD")
    payment = Payment.objects.create(
        organisation=org,
        invoice=invoice,
        method_kind="card",
        attempt=1,
        amount=invoice.total,
        currency="USD",
        status=Payment.Status.REQUIRES_ACTION,
        idempotency_key="overview-3ds",
    )
    html = page(client_for(admin), org)
    assert actions(html)["payment_to_confirm"] == (
        f"Payment to confirm Your bank needs you to confirm the payment of {invoice.number} "
        f"(${invoice.total / 100:,.2f}). Nothing has been charged yet. Confirm payment"
    )
    assert links(section(html, "attention"))["Confirm payment"] == reverse(
        "billing:confirm_payment", args=[org.slug, invoice.number]
    )
    assert "payment_to_confirm" not in actions(page(client_for(member), org))

    Payment.objects.filter(pk=payment.pk).update(status=Payment.Status.SUCCEEDED)
    assert "payment_to_confirm" not in actions(page(client_for(admin), org))


def expiry(expires_at) -> dict:
    """The card fields of a card that stops working at `expires_at` (billing.cards)."""
    last_day = expires_at - timedelta(days=1)
    return {"exp_month": last_day.month, "exp_year": last_day.year, "expires_at": expires_at}


def card(org, *, expires_at):
    return PaymentMethod.objects.create(
        organisation=org,
        stripe_payment_method_id=f"pm_{expires_at:%Y%m%d}",
        brand="visa",
        last4="4242",
        **expiry(expires_at),
    )


def test_a_card_expiring_within_the_reminder_window_needs_attention(
    client_for, org, admin, billing_user, member, subscription
):
    # The reminder window is 30 days (billing.cards.CARD_EXPIRY_REMINDER): one minute more is
    # not yet in it.
    method = card(org, expires_at=NOW + timedelta(days=30, minutes=1))
    assert "card_expiring" not in actions(page(client_for(admin), org))
    PaymentMethod.objects.filter(pk=method.pk).update(**expiry(NOW + timedelta(days=30)))
    assert "card_expiring" in actions(page(client_for(admin), org))

    PaymentMethod.objects.filter(pk=method.pk).update(**expiry(datetime(2026, 12, 1, tzinfo=UTC)))
    for user in (admin, billing_user):
        html = page(client_for(user), org)
        assert actions(html)["card_expiring"] == (
            "Card expiring Your Visa ending 4242 expires at the end of 11/2026. "
            "Update it before the next invoice. Update card"
        )
        assert links(section(html, "attention"))["Update card"] == reverse(
            "billing:payment_method", args=[org.slug]
        )
    assert "card_expiring" not in actions(page(client_for(member), org))

    PaymentMethod.objects.filter(pk=method.pk).update(**expiry(datetime(2026, 11, 1, tzinfo=UTC)))
    assert actions(page(client_for(admin), org))["card_expiring"] == (
        "Card expired Your Visa ending 4242 expired (10/2026). Add a new card so the next "
        "invoice can be paid. Update card"
    )

    PaymentMethod.objects.filter(pk=method.pk).update(status=PaymentMethod.Status.REPLACED)
    assert "card_expiring" not in actions(page(client_for(admin), org))


def test_a_scheduled_downgrade_needs_attention(client_for, org, admin, member):
    subscription = SubscriptionFactory(organisation=org, plan=plan("professional"))
    change = PlanChange.objects.create(
        subscription=subscription,
        kind=PlanChange.Kind.DOWNGRADE,
        status=PlanChange.Status.SCHEDULED,
        from_plan=plan("professional"),
        to_plan=plan("standard"),
        billing_cycle=subscription.billing_cycle,
        effective_at=subscription.current_period_end,
    )
    html = page(client_for(admin), org)
    assert actions(html)["downgrade"] == (
        "Plan change scheduled Your plan changes from Professional to Standard on "
        "1 December 2026. ProcessFlows above its limits pause that day. Review the change"
    )
    assert links(section(html, "attention"))["Review the change"] == reverse(
        "subscriptions:settings", args=[org.slug]
    )
    assert "downgrade" not in actions(page(client_for(member), org))

    PlanChange.objects.filter(pk=change.pk).update(status=PlanChange.Status.CANCELED)
    assert "downgrade" not in actions(page(client_for(admin), org))


def test_a_pending_cancellation_needs_attention_with_its_deletion_date(
    client_for, org, admin, billing_user, member, subscription
):
    Subscription.objects.filter(pk=subscription.pk).update(
        cancel_at_period_end=True, canceled_at=NOW
    )
    expected = (
        "Cancellation pending Your subscription ends on 1 December 2026: no further charges, "
        "and all ProcessFlows stop that day. Your data is deleted on 31 December 2026 "
        "(in 49 days)."
    )
    assert actions(page(client_for(admin), org))["cancellation"] == f"{expected} Undo cancellation"
    assert actions(page(client_for(billing_user), org))["cancellation"] == (
        f"{expected} See the subscription"
    )
    member_html = page(client_for(member), org)
    assert actions(member_html)["cancellation"] == f"{expected} Export Sync Info"
    assert links(section(member_html, "attention"))["Export Sync Info"] == reverse(
        "usage:sync_info_export", args=[org.slug]
    )
    plan_card = text(section(page(client_for(admin), org), "plan"))
    assert "Status Active Ends on 1 December 2026 (cancelled)" in plan_card

    Subscription.objects.filter(pk=subscription.pk).update(cancel_at_period_end=False)
    assert "cancellation" not in actions(page(client_for(admin), org))


def test_an_ended_subscription_shows_the_deletion_date(client_for, org, admin, subscription):
    Subscription.objects.filter(pk=subscription.pk).update(
        status=Subscription.Status.ENDED, ended_at=datetime(2026, 11, 1, 9, 5, tzinfo=UTC)
    )
    html = page(client_for(admin), org)
    assert actions(html)["subscription_ended"] == (
        "Subscription ended Your subscription ended on 1 November 2026. Your data is deleted on "
        "1 December 2026 (in 19 days); until then you can view and export it. Choose a plan"
    )
    assert "Status Ended Ended 1 November 2026" in text(section(html, "plan"))


def test_an_sso_certificate_expiring_needs_the_admins_attention(
    client_for, org, admin, billing_user, subscription
):
    config = SsoConfiguration.objects.create(
        organisation=org,
        idp_certificates=[
            {
                "subject": "CN=idp.acme.test",
                "fingerprint": "ab:cd",
                "not_after": (NOW + timedelta(days=40)).isoformat(),
            }
        ],
    )
    assert "sso_certificate" not in actions(page(client_for(admin), org))

    config.idp_certificates[0]["not_after"] = (NOW + timedelta(days=10)).isoformat()
    config.save(update_fields=["idp_certificates"])
    html = page(client_for(admin), org)
    assert actions(html)["sso_certificate"] == (
        "SSO certificate The IdP signing certificate CN=idp.acme.test expires on 22 Nov 2026 "
        "(in 10 days). Add the new certificate in your IdP and save the metadata again. "
        "Open SSO settings"
    )
    assert links(section(html, "attention"))["Open SSO settings"] == reverse(
        "sso:settings", args=[org.slug]
    )
    assert "sso_certificate" not in actions(page(client_for(billing_user), org))


def test_several_items_at_once(client_for, org, admin, subscription):
    failing(org, subscription)
    card(org, expires_at=datetime(2026, 12, 1, tzinfo=UTC))
    Subscription.objects.filter(pk=subscription.pk).update(cancel_at_period_end=True)
    assert list(actions(page(client_for(admin), org))) == [
        "payment_failed",
        "card_expiring",
        "cancellation",
    ]


# --- Tenancy ----------------------------------------------------------------------------------


def test_another_organisations_overview_is_a_404(
    client, client_for, org, other_org, admin, outsider, subscription
):
    assert client_for(outsider).get(overview_url(org)).status_code == 404
    assert client_for(admin).get(overview_url(other_org)).status_code == 404
    assert client_for(admin).get("/o/no-such-org/").status_code == 404
    client.logout()
    response = client.get(overview_url(org))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_a_post_changes_nothing(client_for, org, admin, subscription):
    assert client_for(admin).post(overview_url(org)).status_code == 405


# --- Cost -------------------------------------------------------------------------------------


def grow(org, subscription, *, size: int) -> None:
    """`size` invoices, ProcessFlows, members and usage days, and a failed payment, an expiring
    card, a scheduled downgrade and an SSO certificate, so every part of the page runs."""
    environment = EnvironmentFactory(organisation=org)
    for n in range(size):
        issued_invoice(
            organisation=org, status=Invoice.Status.PAID, issued_at=PERIOD_START - timedelta(days=n)
        )
        ProcessFlowFactory(organisation=org, environment=environment)
        MembershipFactory(organisation=org, role=Membership.Role.MEMBER)
    usage_days(org, subscription, size, 100)


@pytest.fixture
def everything(org, subscription):
    failing(org, subscription)
    card(org, expires_at=datetime(2026, 12, 1, tzinfo=UTC))
    SsoConfiguration.objects.create(
        organisation=org,
        idp_certificates=[
            {"subject": "CN=idp", "fingerprint": "ff", "not_after": "2026-11-20T00:00:00+00:00"}
        ],
    )
    PlanChange.objects.create(
        subscription=subscription,
        kind=PlanChange.Kind.DOWNGRADE,
        status=PlanChange.Status.SCHEDULED,
        from_plan=subscription.plan,
        to_plan=subscription.plan,
        billing_cycle=subscription.billing_cycle,
        effective_at=subscription.current_period_end,
    )
    return subscription


def queries(client, org) -> int:
    with CaptureQueriesContext(connection) as captured:
        page(client, org)
    return len(captured)


@pytest.mark.parametrize("role", ROLES)
def test_the_page_costs_the_same_with_little_and_much_data(
    request, client_for, org, everything, role
):
    """Counts are compared, not fixed: the upcoming invoice (billing) adds its own constant."""
    client = client_for(request.getfixturevalue(role))
    page(client, org)  # the first visit stores the organisation in the session
    grow(org, everything, size=1)
    small = queries(client, org)
    grow(org, everything, size=12)
    assert queries(client, org) == small
    assert "payment_failed" in actions(page(client, org))
