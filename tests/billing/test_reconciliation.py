"""Reconciliation with Stripe (billing.reconciliation): our card payments against localstripe's
PaymentIntents, the differences in Django admin, and their resolution through our services.

localstripe stamps PaymentIntents with the real clock, so these tests live in real time:
`T` is an hour before the test started (when our rows were made) and reconciliation runs at
`LATER`, an hour after, when every charge made during the test has settled.
"""

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db.models import F
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import AuditEvent, OutgoingEmail
from billing import gateway
from billing.collection import retry_payment
from billing.dunning import amount_due
from billing.invoicing import billing_run_issue, subscription_start
from billing.models import (
    BillingProfile,
    CreditNote,
    DunningCase,
    Invoice,
    Payment,
    PaymentMethod,
    ReconciliationDifference,
)
from billing.payments import payment_record_manual, payment_succeeded
from billing.reconciliation import (
    difference_dismiss,
    difference_resolve_mark_failed,
    difference_resolve_record_payment,
    reconcile,
)
from billing.upgrades import subscription_upgrade, upgrade_quote
from core.errors import ServiceError
from core.money import format_money
from devkit.stripe_standin import VISA, card_exp_year
from subscriptions.models import PaymentMethodKind, Plan, Subscription
from support.staff import BILLING, READ_ONLY
from tests.accounts.factories import UserFactory
from tests.billing.helpers import add_card, subscribe

pytestmark = pytest.mark.django_db

DIFFERENCES = "/admin/billing/reconciliationdifference/"


@pytest.fixture
def clock():
    """(T, LATER): when our rows were made, and when reconciliation looks at them."""
    started = timezone.now().replace(microsecond=0)
    return started - timedelta(hours=1), started + timedelta(hours=1)


def open_first_invoice(org, *, now) -> Invoice:
    """A card on file and a chosen plan: the first invoice is issued, not yet charged."""
    add_card(org, now=now)
    return subscription_start(
        organisation=org,
        actor=Actor(user=None),
        plan=Plan.objects.get(code="professional"),
        billing_cycle="monthly",
        currency="USD",
        now=now,
    )


def charge_behind_our_back(localstripe, org, *, amount, currency="usd", metadata=None) -> str:
    """Someone charges the organisation's card in Stripe directly (create, then confirm)."""
    customer_id = BillingProfile.objects.get(organisation=org).stripe_customer_id
    method = PaymentMethod.objects.get(organisation=org, status="active")
    intent = localstripe.v1.payment_intents.create(
        params={
            "customer": customer_id,
            "payment_method": method.stripe_payment_method_id,
            "payment_method_types": ["card"],
            "amount": amount,
            "currency": currency,
            "metadata": metadata or {},
        }
    )
    confirmed = localstripe.v1.payment_intents.confirm(intent["id"])
    assert confirmed["status"] == "succeeded"
    return intent["id"]


def recorded_without_stripe(
    invoice: Invoice, *, at, processor_id: str = "pi_NotAtStripe0001"
) -> Payment:
    """Our books say a card paid the invoice; Stripe never saw the charge (made by ORM here)."""
    payment = Payment.objects.create(
        organisation_id=invoice.organisation_id,
        invoice=invoice,
        method_kind=PaymentMethodKind.CARD,
        attempt=invoice.payments.count() + 1,
        amount=invoice.amount_due,
        currency=invoice.currency,
        status=Payment.Status.SUCCEEDED,
        idempotency_key=f"invoice-{invoice.public_id}-attempt-9",
        processor_id=processor_id,
        created_at=at,
        completed_at=at,
    )
    Invoice.objects.filter(pk=invoice.pk).update(
        status="paid", amount_paid=F("total"), paid_at=at, closed_at=at
    )
    return payment


def renewal_recorded_without_stripe(org, *, at) -> Payment:
    period_end = Subscription.objects.get(organisation=org).current_period_end
    assert billing_run_issue(now=period_end) == 1
    return recorded_without_stripe(Invoice.objects.get(organisation=org, status="open"), at=at)


def open_differences():
    return list(
        ReconciliationDifference.objects.filter(resolved_at__isnull=True).values_list(
            "kind", "processor_id", "payment_id", "invoice_id", "organisation_id"
        )
    )


def counts(result) -> tuple[int, int, int]:
    return (result.new, result.still_open, result.closed)


def difference_found(*, now):
    """Run the reconciliation; the one difference it finds."""
    reconcile(now=now)
    return ReconciliationDifference.objects.get()


def refusal(resolve, difference, ops, *, reason, now) -> str:
    """What `resolve` (a difference_resolve_* service) answers when it refuses ops."""
    with pytest.raises(ServiceError) as refused:
        resolve(difference=difference, actor=Actor(user=ops), reason=reason, now=now)
    return refused.value.message


# Found -----------------------------------------------------------------------------------------


def test_a_charge_made_behind_our_back_is_found_and_recorded(
    localstripe, org, ops, clock, committed
):
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    intent_id = charge_behind_our_back(
        localstripe, org, amount=invoice.total, metadata={"invoice": invoice.number}
    )

    assert counts(reconcile(now=LATER)) == (1, 0, 0)

    assert open_differences() == [("missing_here", intent_id, None, invoice.pk, org.pk)]
    difference = ReconciliationDifference.objects.get()
    assert (difference.found_at, difference.last_seen_at) == (LATER, LATER)
    assert difference.ours == {
        "invoice": invoice.number,
        "invoice_status": "open",
        "invoice_total": invoice.total,
        "amount_due": invoice.total,
        "currency": "USD",
        "status": "no payment recorded",
    }
    assert {key: difference.theirs[key] for key in ("payment_intent", "status", "amount")} == {
        "payment_intent": intent_id,
        "status": "succeeded",
        "amount": invoice.total,
    }
    assert (difference.theirs["currency"], difference.theirs["invoice"]) == ("USD", invoice.number)

    OutgoingEmail.objects.all().delete()
    with committed():
        payment = difference_resolve_record_payment(
            difference=difference, actor=Actor(user=ops), reason="Timed out on 3 May", now=LATER
        )

    invoice.refresh_from_db()
    assert (invoice.status, invoice.amount_paid, invoice.paid_at) == ("paid", invoice.total, LATER)
    [only] = Payment.objects.filter(invoice=invoice)
    assert only == payment
    assert (only.status, only.processor_id, only.amount, only.method_kind, only.recorded_by) == (
        "succeeded",
        intent_id,
        invoice.total,
        "card",
        ops,
    )
    assert only.payment_method == PaymentMethod.objects.get(organisation=org, status="active")
    # The same path as a successful charge: the subscription starts and a receipt goes out.
    assert Subscription.objects.get(organisation=org).status == "active"
    assert list(OutgoingEmail.objects.values_list("template", flat=True)) == ["payment_receipt"]
    difference.refresh_from_db()
    assert (
        difference.resolution,
        difference.resolved_at,
        difference.resolved_by,
        difference.note,
        difference.payment,
    ) == ("payment_recorded", LATER, ops, "Timed out on 3 May", payment)
    event = AuditEvent.objects.get(action="billing.reconciliation_payment_recorded")
    assert (event.organisation, event.actor, event.target_label) == (org, ops, invoice.number)
    assert event.changes == {
        "status": {"old": "open", "new": "paid"},
        "payment": {"old": None, "new": "succeeded"},
        "processor_id": {"old": None, "new": intent_id},
        "reason": {"old": None, "new": "Timed out on 3 May"},
    }

    # Recorded: the next run finds both sides agreeing.
    assert counts(reconcile(now=LATER + timedelta(hours=1))) == (0, 0, 0)
    assert open_differences() == []


def test_resolving_twice_changes_nothing_the_second_time(localstripe, org, ops, clock):
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    charge_behind_our_back(
        localstripe, org, amount=invoice.total, metadata={"invoice": invoice.number}
    )
    difference = difference_found(now=LATER)
    difference_resolve_record_payment(
        difference=difference, actor=Actor(user=ops), reason="Timed out", now=LATER
    )

    for resolve in (
        difference_resolve_record_payment,
        difference_dismiss,
    ):
        assert refusal(
            resolve, difference, ops, reason="Again", now=LATER + timedelta(minutes=5)
        ) == (
            f"This difference was already resolved on {LATER:%Y-%m-%d %H:%M} UTC "
            "(payment recorded here): nothing changed."
        )
    assert Payment.objects.filter(invoice=invoice).count() == 1
    assert AuditEvent.objects.filter(action__startswith="billing.reconciliation").count() == 1
    difference.refresh_from_db()
    assert (difference.resolution, difference.resolved_at, difference.note) == (
        "payment_recorded",
        LATER,
        "Timed out",
    )


def test_a_payment_recorded_only_here_is_found_and_marked_failed(
    localstripe, org, ops, clock, committed
):
    T, LATER = clock
    subscribe(org, now=T)  # the first invoice, really charged: Stripe agrees on it
    payment = renewal_recorded_without_stripe(org, at=T)
    invoice = payment.invoice

    assert counts(reconcile(now=LATER)) == (1, 0, 0)

    assert open_differences() == [
        ("missing_at_processor", "pi_NotAtStripe0001", payment.pk, invoice.pk, org.pk)
    ]
    difference = ReconciliationDifference.objects.get()
    assert difference.theirs == {
        "payment_intent": "pi_NotAtStripe0001",
        "status": "not found at Stripe",
    }
    assert (difference.ours["status"], difference.ours["amount"]) == ("succeeded", invoice.total)

    OutgoingEmail.objects.all().delete()
    with committed():
        difference_resolve_mark_failed(
            difference=difference, actor=Actor(user=ops), reason="Not in Stripe", now=LATER
        )

    invoice.refresh_from_db()
    payment.refresh_from_db()
    assert (invoice.status, invoice.amount_paid, invoice.paid_at, invoice.closed_at) == (
        "open",
        0,
        None,
        None,
    )
    assert (payment.status, payment.failure_code, payment.failure_message) == (
        "failed",
        "not_at_processor",
        "Our card processor has no record of this payment.",
    )
    # The failure path of a declined charge: the email, then dunning from day 0.
    assert list(OutgoingEmail.objects.values_list("template", flat=True)) == ["payment_failed"]
    case = DunningCase.objects.get(organisation=org)
    assert (case.status, case.started_at) == ("open", LATER)
    assert Subscription.objects.get(organisation=org).status == "past_due"
    difference.refresh_from_db()
    assert (difference.resolution, difference.resolved_by) == ("marked_failed", ops)
    event = AuditEvent.objects.get(action="billing.reconciliation_marked_failed")
    assert event.changes == {
        "status": {"old": "paid", "new": "open"},
        "payment": {"old": "succeeded", "new": "failed"},
        "processor_id": {"old": "pi_NotAtStripe0001", "new": None},
        "reason": {"old": None, "new": "Not in Stripe"},
    }

    with pytest.raises(ServiceError, match="already resolved"):
        difference_resolve_mark_failed(
            difference=difference, actor=Actor(user=ops), reason="Again", now=LATER
        )
    assert DunningCase.objects.filter(organisation=org).count() == 1
    assert counts(reconcile(now=LATER + timedelta(hours=1))) == (0, 0, 0)


def test_a_payment_stripe_has_after_all_is_not_marked_failed(localstripe, org, ops, clock):
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    payment = recorded_without_stripe(invoice, at=T, processor_id="")
    assert counts(reconcile(now=LATER)) == (1, 0, 0)
    assert open_differences() == [("missing_at_processor", "", payment.pk, invoice.pk, org.pk)]
    # The charge turns up at Stripe after all, carrying our attempt's key.
    method = PaymentMethod.objects.get(organisation=org, status="active")
    intent_id = gateway.charge(
        customer_id=BillingProfile.objects.get(organisation=org).stripe_customer_id,
        payment_method_id=method.stripe_payment_method_id,
        amount=payment.amount,
        currency=payment.currency,
        idempotency_key=payment.idempotency_key,
        description=f"Invoice {invoice.number}",
        metadata={"invoice": invoice.number},
    ).payment_intent_id

    assert refusal(
        difference_resolve_mark_failed,
        ReconciliationDifference.objects.get(),
        ops,
        reason="Not in Stripe",
        now=LATER,
    ) == (
        f"Stripe has {intent_id} as succeeded ({format_money(invoice.total, 'USD')}): the "
        "payment is not missing there, nothing changed."
    )
    payment.refresh_from_db()
    invoice.refresh_from_db()
    assert (payment.status, invoice.status) == ("succeeded", "paid")
    assert counts(reconcile(now=LATER + timedelta(hours=1))) == (0, 0, 1)


def test_an_amount_that_differs_is_reported_and_a_dismissal_stands(localstripe, org, ops, clock):
    T, LATER = clock
    invoice = subscribe(org, now=T)
    payment = invoice.payments.get()
    Payment.objects.filter(pk=payment.pk).update(amount=F("amount") + 1)

    assert counts(reconcile(now=LATER)) == (1, 0, 0)
    assert open_differences() == [
        ("amount_mismatch", payment.processor_id, payment.pk, invoice.pk, org.pk)
    ]
    difference = ReconciliationDifference.objects.get()
    assert (difference.ours["amount"], difference.theirs["amount"]) == (
        invoice.total + 1,
        invoice.total,
    )

    difference_dismiss(
        difference=difference, actor=Actor(user=ops), reason="Corrected by hand", now=LATER
    )

    # Ops decided: the next runs do not reopen it.
    assert counts(reconcile(now=LATER + timedelta(hours=1))) == (0, 0, 0)
    difference.refresh_from_db()
    assert (difference.resolution, difference.resolved_by, difference.note) == (
        "no_action",
        ops,
        "Corrected by hand",
    )
    assert ReconciliationDifference.objects.count() == 1
    event = AuditEvent.objects.get(action="billing.reconciliation_dismissed")
    assert event.changes["reason"] == {"old": None, "new": "Corrected by hand"}


# Reruns and differences that settle ------------------------------------------------------------


def test_a_rerun_only_moves_last_seen(localstripe, org, clock):
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    charge_behind_our_back(
        localstripe, org, amount=invoice.total, metadata={"invoice": invoice.number}
    )
    reconcile(now=LATER)
    first = open_differences()

    assert counts(reconcile(now=LATER + timedelta(hours=2))) == (0, 1, 0)

    assert open_differences() == first
    difference = ReconciliationDifference.objects.get()
    assert (difference.found_at, difference.last_seen_at) == (LATER, LATER + timedelta(hours=2))


@pytest.mark.parametrize("named_by", ["idempotency key", "payment id"])
def test_a_difference_that_settles_is_closed_automatically(localstripe, org, ops, clock, named_by):
    """Our charge's answer was lost (pending here, succeeded at Stripe); the webhook is late.
    The PaymentIntent names our attempt by the key `gateway.charge` sends, or by its id."""
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    customer_id = BillingProfile.objects.get(organisation=org).stripe_customer_id
    method = PaymentMethod.objects.get(organisation=org, status="active")
    pending = Payment.objects.create(
        organisation=org,
        invoice=invoice,
        method_kind=PaymentMethodKind.CARD,
        payment_method=method,
        attempt=1,
        amount=invoice.total,
        currency=invoice.currency,
        idempotency_key=f"invoice-{invoice.public_id}-attempt-1",
        created_at=T,
    )
    if named_by == "idempotency key":
        intent_id = gateway.charge(
            customer_id=customer_id,
            payment_method_id=method.stripe_payment_method_id,
            amount=pending.amount,
            currency=pending.currency,
            idempotency_key=pending.idempotency_key,
            description=f"Invoice {invoice.number}",
            metadata={"invoice": invoice.number},
        ).payment_intent_id
    else:
        intent_id = charge_behind_our_back(
            localstripe,
            org,
            amount=pending.amount,
            metadata={"invoice": invoice.number, "payment": str(pending.pk)},
        )

    assert counts(reconcile(now=LATER)) == (1, 0, 0)
    # The pending attempt is the one Stripe charged for.
    assert open_differences() == [("missing_here", intent_id, pending.pk, invoice.pk, org.pk)]
    assert ReconciliationDifference.objects.get().ours["status"] == "pending"

    payment_succeeded(payment=pending, processor_id=intent_id, now=LATER)
    assert refusal(
        difference_resolve_record_payment,
        ReconciliationDifference.objects.get(),
        ops,
        reason="Record it",
        now=LATER,
    ) == (
        f"Payment {pending.pk} was recorded as succeeded meanwhile: nothing changed. The next "
        "reconciliation closes this difference if both sides agree."
    )
    assert counts(reconcile(now=LATER + timedelta(hours=1))) == (0, 0, 1)

    difference = ReconciliationDifference.objects.get()
    assert (difference.resolution, difference.resolved_at, difference.resolved_by) == (
        "no_action",
        LATER + timedelta(hours=1),
        None,
    )
    assert difference.note == (
        f"Closed automatically: on {LATER + timedelta(hours=1):%Y-%m-%d %H:%M} UTC our payment "
        "and Stripe agreed (the outcome was recorded meanwhile, or the charge was refunded)."
    )
    assert counts(reconcile(now=LATER + timedelta(hours=2))) == (0, 0, 0)


def test_an_old_difference_stays_open_until_it_really_settles(localstripe, org, clock):
    """Out of the window, a difference is looked at again rather than closed for its age."""
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    pending = Payment.objects.create(
        organisation=org,
        invoice=invoice,
        method_kind=PaymentMethodKind.CARD,
        attempt=1,
        amount=invoice.total,
        currency=invoice.currency,
        idempotency_key=f"invoice-{invoice.public_id}-attempt-1",
        created_at=T,
    )
    intent_id = charge_behind_our_back(
        localstripe,
        org,
        amount=invoice.total,
        metadata={"invoice": invoice.number, "idempotency_key": pending.idempotency_key},
    )
    assert counts(reconcile(now=LATER)) == (1, 0, 0)

    assert counts(reconcile(now=LATER + timedelta(days=5))) == (0, 1, 0)
    payment_succeeded(payment=pending, processor_id=intent_id, now=LATER + timedelta(days=5))
    assert counts(reconcile(now=LATER + timedelta(days=6))) == (0, 0, 1)


def test_a_double_charge_is_reported_and_closes_once_refunded_in_stripe(
    localstripe, org, ops, clock
):
    T, LATER = clock
    invoice = subscribe(org, now=T)  # paid by our own charge
    ours = invoice.payments.get()
    # Someone repeats our charge in the Stripe dashboard, metadata and all.
    intent_id = charge_behind_our_back(
        localstripe,
        org,
        amount=invoice.total,
        metadata={
            "invoice": invoice.number,
            "payment": str(ours.pk),
            "idempotency_key": ours.idempotency_key,
        },
    )
    difference = difference_found(now=LATER)
    assert (difference.kind, difference.processor_id, difference.invoice, difference.payment) == (
        "double_charge",
        intent_id,
        invoice,
        None,
    )

    assert refusal(
        difference_resolve_record_payment, difference, ops, reason="Record it", now=LATER
    ) == (
        'This difference is "Charged twice"; this action is for "Charged at Stripe, not '
        'recorded here" differences. Nothing changed.'
    )
    assert invoice.payments.count() == 1
    assert not AuditEvent.objects.filter(action__startswith="billing.reconciliation").exists()
    difference.refresh_from_db()
    assert difference.resolved_at is None

    # Refunded in the Stripe dashboard: recorded as a credit note, the difference settled.
    refund_id = localstripe.v1.refunds.create(params={"payment_intent": intent_id})["id"]
    result = reconcile(now=LATER + timedelta(hours=1))
    assert (counts(result), result.refunds_recorded) == ((0, 0, 1), 1)
    assert open_differences() == []
    credit_note = CreditNote.objects.get()
    assert (credit_note.outcome, credit_note.total, credit_note.reference) == (
        "refunded_in_stripe",
        invoice.total,
        refund_id,
    )
    difference.refresh_from_db()
    assert (difference.resolution, difference.resolved_by) == ("refunded", None)
    assert counts(reconcile(now=LATER + timedelta(hours=2))) == (0, 0, 0)


def test_charges_still_in_flight_are_left_for_a_later_run(localstripe, org, clock):
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    charge_behind_our_back(
        localstripe, org, amount=invoice.total, metadata={"invoice": invoice.number}
    )
    # Minutes old: a webhook or the charge job's retry may still settle it.
    assert counts(reconcile(now=timezone.now() + timedelta(minutes=5))) == (0, 0, 0)
    assert counts(reconcile(now=LATER)) == (1, 0, 0)


def test_manual_payments_are_not_stripes_business(localstripe, org, clock):
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    # Ops recorded a bank transfer on a card invoice: a card payment without a PaymentIntent.
    payment = payment_record_manual(
        invoice=invoice, actor=Actor(user=None), reference="BANK-7", now=T
    )
    assert (payment.method_kind, payment.status, payment.processor_id) == ("card", "succeeded", "")

    assert counts(reconcile(now=LATER)) == (0, 0, 0)


def test_charges_of_customers_that_are_not_ours_are_ignored(localstripe, org, clock):
    T, LATER = clock
    add_card(org, now=T)
    stranger = localstripe.v1.customers.create(params={"name": "Another product's customer"})
    method = localstripe.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": VISA, "exp_month": 12, "exp_year": card_exp_year(), "cvc": "123"},
        }
    )
    localstripe.v1.payment_methods.attach(method["id"], params={"customer": stranger["id"]})
    localstripe.v1.payment_intents.create(
        params={
            "customer": stranger["id"],
            "payment_method": method["id"],
            "payment_method_types": ["card"],
            "amount": 5000,
            "currency": "usd",
            "confirm": True,
            "off_session": True,
        }
    )

    assert counts(reconcile(now=LATER)) == (0, 0, 0)


# Django admin ----------------------------------------------------------------------------------


@pytest.fixture
def found(localstripe, org, clock):
    """A charge behind our back for the open first invoice, found by reconciliation."""
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    charge_behind_our_back(
        localstripe, org, amount=invoice.total, metadata={"invoice": invoice.number}
    )
    reconcile(now=LATER)
    return ReconciliationDifference.objects.get()


def test_ops_see_both_sides_and_billing_staff_record_the_payment(client_for, found, ops):
    client = client_for(ops)
    listing = client.get(f"{DIFFERENCES}?state=open&kind__exact=missing_here")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "Acme Trading" in page
    assert found.processor_id in page
    assert "record_charge" in page
    # The ops dashboard links here with the open ones filtered.
    assert (
        found.processor_id in client.get(f"{DIFFERENCES}?resolved_at__isnull=True").content.decode()
    )
    assert found.processor_id not in client.get(f"{DIFFERENCES}?state=resolved").content.decode()
    invoice = found.invoice
    amount = format_money(invoice.total, "USD")
    change = client.get(f"{DIFFERENCES}{found.pk}/change/").content.decode()
    assert '<table class="reconciliation-sides">' in change
    assert f"<tr><th>Amount</th><td></td><td>{amount}</td></tr>" in change
    assert (
        f"<tr><th>Invoice</th><td>{invoice.number} (open, {amount} due of {amount})</td>"
        f"<td>{invoice.number}</td></tr>"
    ) in change
    assert "<tr><th>Status</th><td>no payment recorded</td><td>succeeded</td></tr>" in change

    # A reason first; without one nothing happens.
    asked = client.post(DIFFERENCES, {"action": "record_charge", "_selected_action": [found.pk]})
    assert "Reason (kept in the organisation&#x27;s audit log)" in asked.content.decode()
    invoice.refresh_from_db()
    assert invoice.status == "open"
    done = client.post(
        DIFFERENCES,
        {
            "action": "record_charge",
            "_selected_action": [found.pk],
            "apply": "1",
            "reason": "Charged by hand in the dashboard",
        },
        follow=True,
    )
    assert f"{found}: payment recorded, invoice paid." in done.content.decode()
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    found.refresh_from_db()
    assert (found.resolution, found.resolved_by) == ("payment_recorded", ops)


def test_read_only_staff_see_differences_but_cannot_resolve_them(client_for, found):
    reader = UserFactory(is_staff=True)
    reader.groups.add(Group.objects.get(name=READ_ONLY))
    client = client_for(reader)
    assert client.get(f"{DIFFERENCES}{found.pk}/change/").status_code == 200
    listing = client.get(DIFFERENCES).content.decode()
    assert found.processor_id in listing
    for action in ("record_charge", "refund_charge", "mark_payment_failed", "dismiss"):
        assert action not in listing
        client.post(
            DIFFERENCES,
            {"action": action, "_selected_action": [found.pk], "apply": "1", "reason": "try"},
        )
    found.refresh_from_db()
    assert (found.resolved_at, found.resolution) == (None, "")
    assert not Payment.objects.exists()
    assert found.invoice.status == "open"
    assert not AuditEvent.objects.filter(action__startswith="billing.reconciliation").exists()


def test_billing_staff_may_resolve_differences():
    assert (
        Group.objects.get(name=BILLING).permissions.filter(codename="resolve_difference").exists()
    )
    assert not (
        Group.objects.get(name=READ_ONLY).permissions.filter(codename="resolve_difference").exists()
    )


# The job ---------------------------------------------------------------------------------------


def test_the_daily_job_runs_through_tick(localstripe, org, clock):
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    charge_behind_our_back(
        localstripe, org, amount=invoice.total, metadata={"invoice": invoice.number}
    )
    out = StringIO()
    call_command("tick", "--now", LATER.isoformat(), "--job", "reconcile_stripe", stdout=out)
    call_command("tick", "--now", LATER.isoformat(), "--job", "reconcile_stripe", stdout=out)
    assert out.getvalue().splitlines() == [
        "reconcile_stripe: 1 new, 0 still open, 0 closed difference(s)",
        "reconcile_stripe: 0 new, 1 still open, 0 closed difference(s)",
    ]
    assert [kind for kind, *_ in open_differences()] == ["missing_here"]


# Bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("days", [0, -1, 1.5, "3", True])
def test_a_window_that_is_not_whole_days_is_refused(days, settings):
    message = f"Reconciliation needs a whole number of days, at least 1: {days!r}."
    with pytest.raises(ValueError, match="^Reconciliation needs") as refused:
        reconcile(now=timezone.now(), days=days)
    assert str(refused.value) == message
    settings.RECONCILIATION_DAYS = days
    with pytest.raises(ValueError, match="^Reconciliation needs") as refused:
        reconcile(now=timezone.now())
    assert str(refused.value) == message
    assert not ReconciliationDifference.objects.exists()


def test_each_action_is_for_its_kind_of_difference(found, ops, clock):
    _, LATER = clock
    assert refusal(difference_resolve_mark_failed, found, ops, reason="Wrong one", now=LATER) == (
        'This difference is "Charged at Stripe, not recorded here"; this action is for '
        '"Recorded here, not charged at Stripe" differences. Nothing changed.'
    )
    found.refresh_from_db()
    assert found.resolved_at is None


@pytest.mark.parametrize(
    ("actor", "reason", "message"),
    [
        ("ops", "  ", "Give a reason: it is kept in the organisation's audit log."),
        ("system", "Cron", "A difference is resolved by a person, not by the system."),
    ],
)
def test_a_person_and_a_reason_are_needed(found, ops, clock, actor, reason, message):
    _, LATER = clock
    who = Actor(user=ops if actor == "ops" else None)
    for resolve in (difference_resolve_record_payment, difference_dismiss):
        with pytest.raises(ServiceError) as refused:
            resolve(difference=found, actor=who, reason=reason, now=LATER)
        assert refused.value.message == message
    found.refresh_from_db()
    assert found.resolved_at is None
    assert not Payment.objects.exists()


def test_a_charge_that_names_no_invoice_is_not_recorded(localstripe, org, ops, clock):
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    intent_id = charge_behind_our_back(localstripe, org, amount=invoice.total)
    difference = difference_found(now=LATER)
    assert (difference.kind, difference.invoice, difference.organisation) == (
        "missing_here",
        None,
        org,
    )

    assert refusal(
        difference_resolve_record_payment, difference, ops, reason="Record it", now=LATER
    ) == (
        f"The charge {intent_id} ({format_money(invoice.total, 'USD')}) names no invoice of "
        "this organisation in its metadata: nothing was recorded. Find out what it was for; "
        "refund it in Stripe if it was a mistake, then dismiss the difference."
    )
    assert not Payment.objects.exists()
    invoice.refresh_from_db()
    assert invoice.status == "open"


def upgrade_recorded_without_stripe(org, *, at) -> Payment:
    """An upgrade to Enterprise whose charge we recorded as succeeded (so the new plan applied)
    while Stripe never saw it."""
    subscription = Subscription.objects.get(organisation=org)
    enterprise = Plan.objects.get(code="enterprise")
    quote = upgrade_quote(subscription=subscription, plan=enterprise, now=at)
    invoice = subscription_upgrade(
        organisation=org, actor=Actor(user=None), plan=enterprise, quoted_total=quote.total, now=at
    )
    payment = Payment.objects.create(
        organisation_id=org.pk,
        invoice=invoice,
        method_kind=PaymentMethodKind.CARD,
        attempt=1,
        amount=invoice.total,
        currency=invoice.currency,
        status=Payment.Status.PENDING,
        idempotency_key=f"invoice-{invoice.public_id}-attempt-9",
        created_at=at,
    )
    return payment_succeeded(payment=payment, processor_id="pi_NotAtStripe0001", now=at)


def test_an_upgrade_payment_marked_failed_goes_into_dunning_and_the_plan_stays(
    localstripe, org, ops, clock
):
    T, LATER = clock
    subscribe(org, now=T)
    payment = upgrade_recorded_without_stripe(org, at=T + timedelta(minutes=5))
    assert Subscription.objects.get(organisation=org).plan.code == "enterprise"
    reconcile(now=LATER)

    difference_resolve_mark_failed(
        difference=ReconciliationDifference.objects.get(),
        actor=Actor(user=ops),
        reason="Not in Stripe",
        now=LATER,
    )

    payment.refresh_from_db()
    invoice = Invoice.objects.get(pk=payment.invoice_id)
    assert (payment.status, invoice.kind, invoice.status, invoice.amount_paid) == (
        "failed",
        "upgrade",
        "open",
        0,
    )
    # Owed like any other open invoice: the failed-payment path, the plan applied stays.
    subscription = Subscription.objects.get(organisation=org)
    assert (subscription.status, subscription.plan.code) == ("past_due", "enterprise")
    assert invoice.plan_change.status == "applied"
    case = DunningCase.objects.get(organisation=org)
    assert (case.status, case.started_at) == ("open", LATER)
    assert amount_due(subscription) == invoice.total
    # Retry Payment charges it, and the subscription is active again.
    outcome = retry_payment(organisation=org, actor=Actor(user=None), now=LATER)
    assert (outcome.attempts, outcome.paid) == (1, 1)
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"
    subscription.refresh_from_db()
    assert (subscription.status, subscription.plan.code) == ("active", "enterprise")
    assert DunningCase.objects.get(organisation=org).status == "resolved"


def test_a_charge_for_another_amount_is_not_recorded(localstripe, org, ops, clock):
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    charge_behind_our_back(
        localstripe, org, amount=invoice.total - 1, metadata={"invoice": invoice.number}
    )
    reconcile(now=LATER)

    with pytest.raises(ServiceError, match="nothing was recorded. Refund the charge in Stripe"):
        difference_resolve_record_payment(
            difference=ReconciliationDifference.objects.get(),
            actor=Actor(user=ops),
            reason="Record it",
            now=LATER,
        )
    assert not Payment.objects.exists()


# The gateway -----------------------------------------------------------------------------------


def test_payment_intents_are_listed_across_pages_within_the_window(
    localstripe, org, clock, monkeypatch
):
    T, LATER = clock
    invoice = open_first_invoice(org, now=T)
    made = [
        charge_behind_our_back(localstripe, org, amount=100 + n, metadata={"n": str(n)})
        for n in range(5)
    ]
    monkeypatch.setattr(gateway, "LIST_PAGE_SIZE", 2)  # three pages

    listed = gateway.payment_intents_since(created_after=T, created_before=LATER)

    assert sorted(charge.payment_intent_id for charge in listed) == sorted(made)
    first = next(charge for charge in listed if charge.payment_intent_id == made[0])
    customer_id = BillingProfile.objects.get(organisation=org).stripe_customer_id
    assert (first.status, first.amount, first.currency, first.customer_id, first.metadata) == (
        "succeeded",
        100,
        "usd",
        customer_id,
        {"n": "0"},
    )
    assert first.amount_refunded == 0
    assert T < first.created < LATER
    assert gateway.payment_intents_since(created_after=LATER) == []
    assert gateway.payment_intents_since(created_after=T, created_before=T) == []
    assert invoice.status == "open"
