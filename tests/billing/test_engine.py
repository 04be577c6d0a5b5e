"""The billing engine against real Postgres and localstripe."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from accounts.audit import Actor
from billing.cards import card_expiry_reminders_send
from billing.invoicing import billing_run_issue, subscription_start
from billing.models import Invoice, InvoiceSequence, Payment, PaymentMethod
from billing.payments import invoice_charge, invoices_charge_due, payment_record_manual
from core.errors import ServiceError
from core.jobs import run_job
from devkit.stripe_standin import CHARGE_FAILS, DISCOVER, VISA_DECLINED, StripeJsError
from subscriptions.models import Plan, PlanPrice, Subscription
from tests.accounts.factories import MembershipFactory, OrganisationFactory
from tests.billing.helpers import START, add_card, subscribe

pytestmark = pytest.mark.django_db


def test_choosing_a_plan_issues_and_charges_the_first_invoice(localstripe, org, admin, committed):
    with committed():
        invoice = subscribe(org, plan="professional", cycle="monthly")
    subscription = Subscription.objects.get(organisation=org)
    assert (subscription.status, subscription.plan.code, subscription.billing_cycle) == (
        "active",
        "professional",
        "monthly",
    )
    assert (subscription.current_period_start, subscription.current_period_end) == (
        START,
        datetime(2026, 2, 28, 10, 0, tzinfo=UTC),  # Jan 31 + 1 month, clamped
    )
    assert invoice.number == "INV-2026-000001"
    assert (invoice.status, invoice.subtotal, invoice.currency) == ("paid", 79900, "USD")
    # No billing country yet: the seller's (Ireland, 23 %) applies.
    assert (invoice.tax_rule, invoice.tax_rate_bp, invoice.tax_amount, invoice.total) == (
        "standard",
        2300,
        18377,
        98277,
    )
    [line] = invoice.lines.all()
    assert (line.description, line.amount) == ("Professional plan, monthly subscription", 79900)
    [payment] = invoice.payments.all()
    assert (payment.status, payment.amount, payment.attempt) == ("succeeded", 98277, 1)
    [intent] = localstripe.v1.payment_intents.list().data
    assert (intent["id"], intent["amount"], intent["status"]) == (
        payment.processor_id,
        98277,
        "succeeded",
    )
    subjects = [message.subject for message in mail.outbox]
    assert "Receipt for invoice INV-2026-000001: $982.77 paid" in subjects
    assert "Invoice INV-2026-000001 from APPSeCONNECT: $982.77" in subjects


def test_card_declined_at_entry_saves_nothing(localstripe, org, admin):
    with pytest.raises(StripeJsError) as declined:
        add_card(org, number=VISA_DECLINED)
    assert declined.value.message == "Your card was declined."
    assert PaymentMethod.objects.count() == 0


def test_unsupported_card_brand_is_refused(localstripe, org, admin):
    with pytest.raises(ServiceError) as refused:
        add_card(org, number=DISCOVER)
    assert refused.value.message == (
        "We accept Visa, Mastercard and American Express cards. Please use one of those."
    )
    assert PaymentMethod.objects.count() == 0


def test_card_that_fails_to_charge_leaves_the_invoice_open(localstripe, org, admin, committed):
    with committed():
        invoice = subscribe(org, number=CHARGE_FAILS)
    assert invoice.status == "open"
    [payment] = invoice.payments.all()
    assert (payment.status, payment.failure_message) == ("failed", "Your card was declined.")
    assert Subscription.objects.get().status == "incomplete"
    failed = [m for m in mail.outbox if m.subject == f"Payment failed for invoice {invoice.number}"]
    assert sorted(m.to[0] for m in failed) == sorted([org.primary_email, "admin@acme.test"])
    assert "Reason: Your card was declined." in failed[0].body
    # Choosing the same plan again with a working card pays the same invoice, not a new one.
    add_card(org)
    again = subscription_start(
        organisation=org,
        actor=Actor(user=admin),
        plan=Plan.objects.get(code="professional"),
        billing_cycle="monthly",
        currency="USD",
        now=START,
    )
    assert again.pk == invoice.pk
    invoice_charge(invoice=again, now=START)
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert Subscription.objects.get().status == "active"
    assert Invoice.objects.count() == 1


def test_charging_twice_never_charges_twice(localstripe, org, admin):
    add_card(org)
    invoice = subscription_start(
        organisation=org,
        actor=Actor(user=admin),
        plan=Plan.objects.get(code="standard"),
        billing_cycle="monthly",
        currency="USD",
        now=START,
    )
    invoice_charge(invoice=invoice, now=START)
    with pytest.raises(ServiceError, match="is paid"):
        invoice_charge(invoice=invoice, now=START)
    assert invoices_charge_due(now=START + timedelta(hours=1)) == 0
    assert len(localstripe.v1.payment_intents.list().data) == 1


def test_billing_run_issues_each_period_once(subscribed, org, localstripe):
    renewal = datetime(2026, 2, 28, 10, 0, tzinfo=UTC)
    assert billing_run_issue(now=renewal - timedelta(seconds=1)) == 0
    assert billing_run_issue(now=renewal) == 1
    assert billing_run_issue(now=renewal) == 0
    invoice = Invoice.objects.order_by("-pk").first()
    assert (invoice.number, invoice.period_start, invoice.period_end) == (
        "INV-2026-000002",
        renewal,
        datetime(2026, 3, 31, 10, 0, tzinfo=UTC),  # back to the 31st: anchored on Jan 31
    )
    assert invoices_charge_due(now=renewal) == 1
    invoice.refresh_from_db()
    assert invoice.status == "paid"


def test_tick_twice_issues_one_invoice(subscribed, org, localstripe, capsys):
    from django.core.management import call_command

    call_command("tick", "--now", "2026-02-28T10:00:00Z")
    call_command("tick", "--now", "2026-02-28T10:00:00Z")
    out = capsys.readouterr().out
    assert "billing_run: 1 invoice(s) issued" in out
    assert "billing_run: 0 invoice(s) issued" in out
    assert Invoice.objects.count() == 2
    assert Payment.objects.filter(status="succeeded").count() == 2
    assert len(localstripe.v1.payment_intents.list().data) == 2


def test_a_late_run_catches_up_every_missed_period(subscribed, org):
    assert billing_run_issue(now=datetime(2026, 5, 1, tzinfo=UTC)) == 3
    periods = list(
        Invoice.objects.order_by("period_start").values_list("period_start", "period_end")
    )
    for (_, end), (next_start, _) in zip(periods, periods[1:], strict=False):
        assert end == next_start  # no gap, no overlap
    assert periods[-1][1] == datetime(2026, 5, 31, 10, 0, tzinfo=UTC)


def test_price_change_applies_from_the_next_renewal(subscribed, org):
    PlanPrice.objects.filter(plan__code="professional", currency="USD").update(monthly_amount=89900)
    subscribed.refresh_from_db()
    assert subscribed.subtotal == 79900  # the issued invoice never changes
    billing_run_issue(now=datetime(2026, 2, 28, 10, 0, tzinfo=UTC))
    assert Invoice.objects.order_by("-pk").first().subtotal == 89900


def test_switch_to_annual_takes_effect_at_renewal(subscribed, org):
    Subscription.objects.filter(organisation=org).update(scheduled_billing_cycle="annual")
    billing_run_issue(now=datetime(2026, 2, 28, 10, 0, tzinfo=UTC))
    invoice = Invoice.objects.order_by("-pk").first()
    assert (invoice.billing_cycle, invoice.subtotal) == ("annual", 795800)
    assert invoice.period_end == datetime(2027, 2, 28, 10, 0, tzinfo=UTC)
    subscription = Subscription.objects.get(organisation=org)
    assert (subscription.billing_cycle, subscription.scheduled_billing_cycle) == ("annual", "")


def test_suspended_subscription_is_not_renewed(subscribed, org):
    Subscription.objects.filter(organisation=org).update(status="suspended")
    assert billing_run_issue(now=datetime(2026, 4, 1, tzinfo=UTC)) == 0


def _active_subscriptions(count, *, due):
    plan = Plan.objects.get(code="standard")
    subscriptions = []
    for _ in range(count):
        organisation = OrganisationFactory()
        subscriptions.append(
            Subscription(
                organisation=organisation,
                plan=plan,
                billing_cycle="monthly",
                status="active",
                currency="USD",
                anchor_at=due - timedelta(days=31),
                current_period_start=due - timedelta(days=31),
                current_period_end=due,
                current_price=29900,
            )
        )
    Subscription.objects.bulk_create(subscriptions)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_racing_billing_runs_number_invoices_gaplessly():
    due = datetime(2026, 3, 1, tzinfo=UTC)
    _active_subscriptions(60, due=due)
    barrier = threading.Barrier(2)
    counts = []

    def run():
        try:
            barrier.wait()
            counts.append(billing_run_issue(now=due, batch_size=7))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 60
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 61)]
    assert InvoiceSequence.objects.get(year=2026).last_number == 60
    assert Invoice.objects.values("subscription").distinct().count() == 60


def invoice_numbers() -> list[str]:
    return sorted(Invoice.objects.values_list("number", flat=True))


def test_the_first_invoice_of_a_new_year_is_number_one_of_that_year():
    # The seller is in Dublin, on UTC in winter: its 2028 starts at midnight UTC.
    _active_subscriptions(2, due=datetime(2027, 12, 31, 23, 50, tzinfo=UTC))
    billing_run_issue(now=datetime(2027, 12, 31, 23, 55, tzinfo=UTC))
    _active_subscriptions(2, due=datetime(2028, 1, 1, 0, 0, tzinfo=UTC))
    billing_run_issue(now=datetime(2028, 1, 1, 0, 5, tzinfo=UTC))
    assert invoice_numbers() == [
        "INV-2027-000001",
        "INV-2027-000002",
        "INV-2028-000001",
        "INV-2028-000002",
    ]
    assert list(InvoiceSequence.objects.order_by("year").values_list("year", "last_number")) == [
        (2027, 2),
        (2028, 2),
    ]


def test_invoice_numbers_start_again_at_the_sellers_new_year(settings):
    settings.SELLER_TIME_ZONE = "Asia/Kolkata"  # 2028 starts there at 18:30 UTC on 31 December
    _active_subscriptions(1, due=datetime(2027, 12, 31, 18, 0, tzinfo=UTC))
    billing_run_issue(now=datetime(2027, 12, 31, 18, 20, tzinfo=UTC))
    _active_subscriptions(1, due=datetime(2027, 12, 31, 18, 30, tzinfo=UTC))
    billing_run_issue(now=datetime(2027, 12, 31, 18, 40, tzinfo=UTC))
    assert invoice_numbers() == ["INV-2027-000001", "INV-2028-000001"]


def test_tax_follows_the_billing_details_at_issue(subscribed, org):
    from billing.models import BillingProfile

    BillingProfile.objects.filter(organisation=org).update(country="DE", vat_number="DE136695976")
    billing_run_issue(now=datetime(2026, 2, 28, 10, 0, tzinfo=UTC))
    invoice = Invoice.objects.order_by("-pk").first()
    assert (invoice.tax_rule, invoice.tax_amount, invoice.total) == ("reverse_charge", 0, 79900)
    assert "Article 196" in invoice.tax_note
    assert invoice.billing_details["vat_number"] == "DE136695976"
    BillingProfile.objects.filter(organisation=org).update(country="US", vat_number="")
    billing_run_issue(now=datetime(2026, 3, 31, 10, 0, tzinfo=UTC))
    invoice = Invoice.objects.order_by("-pk").first()
    assert (invoice.tax_rule, invoice.tax_amount) == ("none", 0)
    BillingProfile.objects.filter(organisation=org).update(country="GB")
    billing_run_issue(now=datetime(2026, 4, 30, 10, 0, tzinfo=UTC))
    invoice = Invoice.objects.order_by("-pk").first()
    assert (invoice.tax_rule, invoice.tax_rate_bp, invoice.tax_amount) == ("standard", 2000, 15980)


def test_bank_transfer_invoices_wait_for_ops_to_record_payment(subscribed, org, admin, committed):
    Subscription.objects.filter(organisation=org).update(
        billing_cycle="annual", payment_method_kind="bank_transfer"
    )
    renewal = datetime(2026, 2, 28, 10, 0, tzinfo=UTC)
    billing_run_issue(now=renewal)
    invoice = Invoice.objects.order_by("-pk").first()
    assert invoice.payment_method_kind == "bank_transfer"
    assert invoice.due_at == renewal + timedelta(days=30)
    assert invoices_charge_due(now=renewal) == 0  # never charged automatically
    assert invoice.payments.count() == 0
    ops = MembershipFactory(role="admin").user
    with committed():
        payment_record_manual(
            invoice=invoice, actor=Actor(user=ops), reference="BANK-1", now=renewal
        )
    invoice.refresh_from_db()
    assert (invoice.status, invoice.amount_paid) == ("paid", invoice.total)
    assert invoice.payments.get().method_kind == "bank_transfer"
    with pytest.raises(ServiceError, match="is paid"):
        payment_record_manual(invoice=invoice, actor=Actor(user=ops), reference="x", now=renewal)


def test_card_expiry_reminder_is_sent_once_30_days_before(
    localstripe, org, admin, billing_user, committed
):
    card = add_card(org)  # expires in December: it works until the end of December
    expires = datetime(card.exp_year + 1, 1, 1, tzinfo=UTC)
    assert (card.exp_month, card.expires_at) == (12, expires)
    with committed():
        assert card_expiry_reminders_send(now=expires - timedelta(days=31)) == 0
        assert card_expiry_reminders_send(now=expires - timedelta(days=29, hours=23)) == 1
        assert card_expiry_reminders_send(now=expires - timedelta(days=12)) == 0
    reminders = [m for m in mail.outbox if "expires soon" in m.subject]
    assert {m.to[0] for m in reminders} == {
        "admin@acme.test",
        "billing@acme.test",
        org.primary_email,
    }
    assert "ending 4242" in reminders[0].subject


def test_jobs_are_registered_in_billing_order():
    from core.jobs import all_jobs

    names = [job.name for job in all_jobs()]
    assert names.index("billing_run") < names.index("render_invoice_pdfs")
    assert names.index("render_invoice_pdfs") < names.index("charge_open_invoices")


def test_job_runs_as_of_now(subscribed):
    assert run_job("billing_run", now=timezone.now().replace(year=2026, month=2, day=1)) == (
        "0 invoice(s) issued"
    )


def test_ops_switch_to_bank_transfer_only_on_annual_plans(subscribed, org):
    from subscriptions.services import subscription_set_payment_method_kind

    subscription = Subscription.objects.get(organisation=org)
    ops = Actor(user=None)
    with pytest.raises(ServiceError, match="bank transfer needs annual billing"):
        subscription_set_payment_method_kind(
            subscription=subscription, kind="bank_transfer", actor=ops, now=START
        )
    with pytest.raises(ServiceError, match="purchase orders the Enterprise plan"):
        subscription_set_payment_method_kind(
            subscription=subscription, kind="purchase_order", actor=ops, now=START
        )
    Subscription.objects.filter(pk=subscription.pk).update(scheduled_billing_cycle="annual")
    subscription_set_payment_method_kind(
        subscription=subscription, kind="bank_transfer", actor=ops, now=START
    )
    subscription.refresh_from_db()
    assert subscription.payment_method_kind == "bank_transfer"
    billing_run_issue(now=datetime(2026, 2, 28, 10, 0, tzinfo=UTC))
    invoice = Invoice.objects.order_by("-pk").first()
    assert (invoice.payment_method_kind, invoice.billing_cycle) == ("bank_transfer", "annual")


def test_ops_record_a_payment_from_the_invoice_admin(client, subscribed, org, committed):
    from tests.accounts.factories import UserFactory

    ops = UserFactory(is_staff=True, is_superuser=True)
    Subscription.objects.filter(organisation=org).update(
        billing_cycle="annual", payment_method_kind="bank_transfer"
    )
    billing_run_issue(now=datetime(2026, 2, 28, 10, 0, tzinfo=UTC))
    invoice = Invoice.objects.get(status="open")
    client.force_login(ops)
    assert client.get("/admin/billing/invoice/").status_code == 200
    assert client.get(f"/admin/billing/invoice/{invoice.pk}/change/").status_code == 200
    # The reason is asked first (money actions are audited with it); without one nothing happens.
    asked = client.post(
        "/admin/billing/invoice/", {"action": "record_payment", "_selected_action": [invoice.pk]}
    )
    assert "Reason (kept in the organisation&#x27;s audit log)" in asked.content.decode()
    invoice.refresh_from_db()
    assert invoice.status == "open"
    with committed():
        response = client.post(
            "/admin/billing/invoice/",
            {
                "action": "record_payment",
                "_selected_action": [invoice.pk],
                "apply": "1",
                "reason": "Bank transfer ref 4471 received",
            },
            follow=True,
        )
    assert f"{invoice.number} marked paid." in response.content.decode()
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert invoice.payments.get().recorded_by == ops


def test_resubscribing_after_the_subscription_ended(subscribed, org, admin):
    Subscription.objects.filter(organisation=org).update(
        status="ended", cancel_at_period_end=True, canceled_at=START
    )
    later = datetime(2026, 3, 10, tzinfo=UTC)
    invoice = subscription_start(
        organisation=org,
        actor=Actor(user=admin),
        plan=Plan.objects.get(code="standard"),
        billing_cycle="monthly",
        currency="USD",
        now=later,
    )
    invoice_charge(invoice=invoice, now=later)
    subscription = Subscription.objects.get(organisation=org)
    assert (subscription.status, subscription.plan.code, subscription.cancel_at_period_end) == (
        "active",
        "standard",
        False,
    )
    assert subscription.current_period_start == later
    assert Invoice.objects.filter(organisation=org).count() == 2
