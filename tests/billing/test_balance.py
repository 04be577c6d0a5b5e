"""The customer balance (billing.balance): credit applied to the next invoices before any charge,
the minimum-charge rule, ops adjustments, the PDF, Settings > Billing > Balance, and what two
at once or twice in a row cannot do."""

import io
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from pypdf import PdfReader

from accounts.audit import Actor
from accounts.models import AuditEvent, Organisation
from billing.balance import balance_adjust, balance_apply, balance_of, balance_return
from billing.cards import stripe_customer_ensure
from billing.checkout import subscription_checkout
from billing.credit_notes import credit_note_issue
from billing.invoicing import billing_run_issue
from billing.ledger import ledger_check
from billing.models import BalanceEntry, CreditNote, Invoice
from billing.payments import ChargeOutcome, invoice_charge, invoices_charge_due
from billing.pdf import invoice_pdf_bytes
from billing.upgrades import subscription_upgrade, upgrade_quote
from core.errors import ServiceError
from devkit.stripe_standin import CHARGE_FAILS, VISA, confirmed_setup_intent
from retention.deletion import organisation_data_delete
from retention.models import DeletionRecord
from subscriptions.models import Plan, Subscription
from support.staff import READ_ONLY
from tests.accounts.factories import OrganisationFactory, UserFactory
from tests.billing.factories import issued_invoice
from tests.billing.helpers import START, add_card
from tests.subscriptions.factories import PERIOD_START, SubscriptionFactory

pytestmark = pytest.mark.django_db

Kind = BalanceEntry.Kind
# The first invoice (START, 31 Jan) is Professional monthly: $799.00 + 23% tax = $982.77.
TOTAL = 98_277
RENEWAL = datetime(2026, 2, 28, 10, 0, tzinfo=UTC)
NEXT_RENEWAL = datetime(2026, 3, 31, 10, 0, tzinfo=UTC)


def staff(group):
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


def credit_note(invoice, ops, **fields):
    """A credit note on `invoice` credited to the customer balance."""
    fields.setdefault("reason", CreditNote.Reason.SERVICE_ISSUE)
    return credit_note_issue(
        invoice=invoice, actor=Actor(user=ops), outcome="balance", now=START, **fields
    )


def adjust(org, ops, amount, *, currency="USD", reason="Goodwill after the outage", now=START):
    return balance_adjust(
        organisation=org,
        currency=currency,
        amount=amount,
        actor=Actor(user=ops),
        reason=reason,
        now=now,
    )


def invoice_numbered(n: int) -> Invoice:
    return Invoice.objects.get(number=f"INV-2026-{n:06d}")


def intents(localstripe) -> dict[str, int]:
    return {pi["id"]: pi["amount"] for pi in localstripe.v1.payment_intents.list().data}


def payment_findings(org) -> list[str]:
    """What the nightly money check says of the payments and the balance."""
    return [
        v.message
        for v in ledger_check(now=NEXT_RENEWAL + timedelta(days=1), organisation_ids=[org.pk])
        if v.rule in ("payments", "balance")
    ]


def pdf_text(invoice) -> str:
    reader = PdfReader(io.BytesIO(invoice_pdf_bytes(invoice=invoice)))
    return "\n".join(page.extract_text() for page in reader.pages)


# Applied to the next invoices ----------------------------------------------------------------


def test_a_credit_note_pays_part_of_the_renewal_and_the_card_only_the_rest(
    paid, ops, org, localstripe
):
    note = credit_note(paid, ops, amount=10_000)
    credit = BalanceEntry.objects.get(kind=Kind.CREDIT_NOTE)
    assert balance_of(organisation=org, currency="USD") == 10_000

    assert billing_run_issue(now=RENEWAL) == 1
    renewal = invoice_numbered(2)
    assert (renewal.credit_applied, renewal.amount_due, renewal.status) == (
        10_000,
        TOTAL - 10_000,
        Invoice.Status.OPEN,
    )
    [use] = BalanceEntry.objects.filter(kind=Kind.APPLIED)
    assert (use.amount, use.description, use.source, use.invoice) == (
        -10_000,
        f"Credit applied ({note.number})",
        credit,
        renewal,
    )
    assert note.number == "CN-2026-000001"
    credit.refresh_from_db()
    assert credit.remaining == 0
    assert balance_of(organisation=org, currency="USD") == 0

    assert invoices_charge_due(now=RENEWAL) == 1
    payment = renewal.payments.get()
    assert (payment.status, payment.amount) == ("succeeded", 88_277)
    assert intents(localstripe)[payment.processor_id] == 88_277
    renewal.refresh_from_db()
    assert (renewal.status, renewal.amount_paid, renewal.amount_due) == ("paid", 88_277, 0)
    assert payment_findings(org) == []


def test_a_larger_balance_pays_the_renewal_in_full_and_the_rest_goes_to_the_next(
    paid, ops, org, admin, localstripe, committed
):
    credit_note(paid, ops)  # the whole $982.77
    adjust(org, ops, 20_000)
    mail.outbox.clear()

    with committed():
        assert billing_run_issue(now=RENEWAL) == 1
    renewal = invoice_numbered(2)
    assert (renewal.status, renewal.paid_at, renewal.credit_applied) == ("paid", RENEWAL, TOTAL)
    assert (renewal.amount_paid, renewal.amount_due) == (0, 0)
    assert not renewal.payments.exists()
    assert [(u.amount, u.description) for u in renewal.balance_entries.all()] == [
        (-TOTAL, "Credit applied (CN-2026-000001)")
    ]
    assert invoices_charge_due(now=RENEWAL) == 0
    assert len(intents(localstripe)) == 1  # the first invoice's only
    assert Subscription.objects.get(organisation=org).status == Subscription.Status.ACTIVE
    [issued] = [m for m in mail.outbox if renewal.number in m.subject and m.to == [admin.email]]
    assert "Credit applied from your account balance: -$982.77" in issued.body
    assert "Your account balance paid it in full: nothing is charged." in issued.body
    assert "charged to the card" not in issued.body
    assert balance_of(organisation=org, currency="USD") == 20_000

    billing_run_issue(now=NEXT_RENEWAL)
    following = invoice_numbered(3)
    assert (following.credit_applied, following.amount_due) == (20_000, TOTAL - 20_000)
    assert [u.description for u in following.balance_entries.all()] == [
        "Credit applied (balance adjustment)"
    ]
    assert invoices_charge_due(now=NEXT_RENEWAL) == 1
    assert intents(localstripe)[following.payments.get().processor_id] == TOTAL - 20_000
    assert balance_of(organisation=org, currency="USD") == 0
    assert payment_findings(org) == []


def test_invoices_of_one_batch_use_the_balance_in_order_until_it_runs_out(paid, ops, org):
    adjust(org, ops, TOTAL + 21_723)

    # A run three periods late issues them in one batch, oldest first.
    assert billing_run_issue(now=datetime(2026, 5, 1, tzinfo=UTC)) == 3
    second, third, fourth = invoice_numbered(2), invoice_numbered(3), invoice_numbered(4)
    assert second.period_start < third.period_start < fourth.period_start
    assert [(i.credit_applied, i.status) for i in (second, third, fourth)] == [
        (TOTAL, "paid"),
        (21_723, "open"),
        (0, "open"),
    ]
    assert balance_of(organisation=org, currency="USD") == 0


def test_credits_are_used_oldest_first_one_entry_per_credit(paid, ops, org):
    adjust(org, ops, 3_000, now=START)
    note = credit_note(paid, ops, amount=5_000)  # also at START, made after
    adjust(org, ops, 90_000, now=START + timedelta(days=1))

    billing_run_issue(now=RENEWAL)
    renewal = invoice_numbered(2)
    uses = list(renewal.balance_entries.order_by("pk"))
    assert [(u.amount, u.description) for u in uses] == [
        (-3_000, "Credit applied (balance adjustment)"),
        (-5_000, f"Credit applied ({note.number})"),
        (-90_000, "Credit applied (balance adjustment)"),
    ]
    assert renewal.amount_due == 277


def test_the_minimum_charge_rule_leaves_exactly_the_minimum_on_a_card_invoice(
    paid, ops, org, localstripe
):
    adjust(org, ops, TOTAL - 20)  # applied in full, $0.20 would be left: no card takes it

    billing_run_issue(now=RENEWAL)
    renewal = invoice_numbered(2)
    assert (renewal.credit_applied, renewal.amount_due) == (TOTAL - 50, 50)
    assert balance_of(organisation=org, currency="USD") == 30  # kept for the next invoice
    invoices_charge_due(now=RENEWAL)
    assert intents(localstripe)[renewal.payments.get().processor_id] == 50
    renewal.refresh_from_db()
    assert renewal.status == "paid"


def test_bank_transfer_invoices_take_the_whole_balance(paid, ops, org):
    Subscription.objects.filter(organisation=org).update(payment_method_kind="bank_transfer")
    adjust(org, ops, TOTAL - 20)

    billing_run_issue(now=RENEWAL)
    renewal = invoice_numbered(2)
    assert (renewal.payment_method_kind, renewal.credit_applied, renewal.amount_due) == (
        "bank_transfer",
        TOTAL - 20,
        20,
    )
    assert balance_of(organisation=org, currency="USD") == 0


def test_a_card_invoice_under_the_minimum_takes_all_or_nothing(ops):
    small = issued_invoice(lines=[{"description": "Overage", "unit_amount": 40}], tax_rate_bp=0)
    organisation = small.organisation
    Organisation.objects.filter(pk=organisation.pk).update(currency="EUR")
    organisation.refresh_from_db()
    adjust(organisation, ops, 10, currency="EUR")

    # 10 of 40 would leave 30, under the €0.50 minimum; leaving the minimum is impossible.
    assert balance_apply([small], now=START) == []
    small.refresh_from_db()
    assert small.credit_applied == 0
    assert not BalanceEntry.objects.filter(kind=Kind.APPLIED).exists()

    adjust(organisation, ops, 30, currency="EUR")
    assert balance_apply([small], now=START) == [small]  # 40 of 40: paid in full
    assert (small.credit_applied, small.amount_due) == (40, 0)
    assert balance_of(organisation=organisation, currency="EUR") == 0


def test_the_billing_run_twice_applies_the_balance_once(paid, ops, org):
    credit_note(paid, ops, amount=10_000)
    assert billing_run_issue(now=RENEWAL) == 1
    assert billing_run_issue(now=RENEWAL) == 0
    assert BalanceEntry.objects.filter(kind=Kind.APPLIED).count() == 1
    assert invoice_numbered(2).credit_applied == 10_000


def test_a_batch_without_balances_costs_one_query_more(ops, django_assert_num_queries):
    subscriptions = [SubscriptionFactory() for _ in range(3)]
    due = subscriptions[0].current_period_end
    invoices = [
        Invoice(
            organisation=s.organisation,
            currency="USD",
            subtotal=1_000,
            tax_amount=0,
            total=1_000,
            payment_method_kind="card",
        )
        for s in subscriptions
    ]
    adjust(OrganisationFactory(), ops, 1_000)  # someone else's balance changes nothing
    with django_assert_num_queries(1):
        assert balance_apply(invoices, now=due) == []

    with CaptureQueriesContext(connection) as run:
        assert billing_run_issue(now=due) == 3
    assert sum("billing_balanceentry" in q["sql"] for q in run.captured_queries) == 1


def test_the_queries_of_a_batch_with_balances_do_not_grow_with_it(ops):
    def balance_queries(count: int) -> int:
        subscriptions = [SubscriptionFactory(anchor_at=PERIOD_START) for _ in range(count)]
        for subscription in subscriptions:
            adjust(subscription.organisation, ops, 1_000)
        with CaptureQueriesContext(connection) as run:
            billing_run_issue(now=subscriptions[0].current_period_end)
        assert Invoice.objects.filter(credit_applied=1_000).count() >= count
        return sum("billing_balanceentry" in q["sql"] for q in run.captured_queries)

    assert balance_queries(1) == balance_queries(4)


# The first invoice and upgrades --------------------------------------------------------------


def checkout(org, localstripe):
    customer = stripe_customer_ensure(organisation=org)
    return subscription_checkout(
        organisation=org,
        actor=Actor(user=None),
        plan=Plan.objects.get(code="professional"),
        billing_cycle="monthly",
        currency="USD",
        now=START,
        setup_intent_id=confirmed_setup_intent(customer_id=customer, number=VISA),
    )


def test_a_first_invoice_covered_by_the_balance_activates_the_subscription_uncharged(
    localstripe, org, admin, ops
):
    adjust(org, ops, 100_000)

    result = checkout(org, localstripe)
    assert result.outcome == ChargeOutcome.PAID
    invoice = result.invoice
    invoice.refresh_from_db()
    assert (invoice.status, invoice.credit_applied, invoice.amount_paid) == ("paid", TOTAL, 0)
    assert not invoice.payments.exists()
    assert intents(localstripe) == {}
    subscription = Subscription.objects.get(organisation=org)
    assert (subscription.status, subscription.activated_at) == ("active", START)
    assert balance_of(organisation=org, currency="USD") == 100_000 - TOTAL


def test_a_first_invoice_replaced_at_checkout_gives_its_credit_to_the_new_one(
    localstripe, org, admin, ops
):
    adjust(org, ops, 10_000)
    customer = stripe_customer_ensure(organisation=org)

    def choose(cycle, number, now):
        return subscription_checkout(
            organisation=org,
            actor=Actor(user=None),
            plan=Plan.objects.get(code="professional"),
            billing_cycle=cycle,
            currency="USD",
            now=now,
            setup_intent_id=confirmed_setup_intent(customer_id=customer, number=number),
        )

    declined = choose("monthly", CHARGE_FAILS, START)
    assert declined.outcome == ChargeOutcome.DECLINED
    first = declined.invoice
    assert (first.status, first.credit_applied) == ("open", 10_000)

    annual = choose("annual", VISA, START + timedelta(minutes=5))
    assert annual.outcome == ChargeOutcome.PAID
    first.refresh_from_db()
    assert (first.status, first.credit_applied) == ("void", 0)
    assert annual.invoice.credit_applied == 10_000
    assert annual.payment.amount == annual.invoice.total - 10_000
    assert balance_of(organisation=org, currency="USD") == 0
    assert [e.kind for e in BalanceEntry.objects.order_by("pk")] == [
        Kind.ADJUSTMENT,
        Kind.APPLIED,
        Kind.RETURNED,
        Kind.APPLIED,
    ]
    assert payment_findings(org) == []


def test_a_first_invoice_partly_covered_charges_the_rest(localstripe, org, admin, ops):
    adjust(org, ops, 10_000)

    result = checkout(org, localstripe)
    assert result.outcome == ChargeOutcome.PAID
    assert result.payment.amount == TOTAL - 10_000
    assert intents(localstripe) == {result.payment.processor_id: TOTAL - 10_000}
    assert Subscription.objects.get(organisation=org).status == "active"


def test_the_checkout_page_says_what_the_balance_pays_and_what_the_card_does(
    client_for, localstripe, org, admin, ops
):
    adjust(org, ops, 10_000)
    page = (
        client_for(admin)
        .get(
            reverse("billing:checkout", args=[org.slug]),
            {"plan": "professional", "billing_cycle": "monthly", "currency": "USD"},
        )
        .content.decode()
    )
    assert "<dt>From your account balance</dt><dd>-$100.00</dd>" in page
    assert "<dt>Charged today</dt><dd><strong>$882.77</strong></dd>" in page
    assert "Pay $882.77 and subscribe" in page


def test_the_upgrade_page_says_what_the_balance_pays(
    client_for, paid, ops, org, admin, time_machine
):
    time_machine.move_to(START + timedelta(days=14))
    client = client_for(admin)
    url = reverse("billing:upgrade_confirm", args=[org.slug]) + "?plan=enterprise"
    adjust(org, ops, 10_000)
    page = client.get(url).content.decode()
    assert "<dt>From your account balance</dt><dd>-$100.00</dd>" in page
    assert "Pay $638.00 and upgrade" in page
    adjust(org, ops, 90_000)
    page = client.get(url).content.decode()
    assert "Upgrade now" in page
    assert "Pay $" not in page


def test_an_upgrade_the_balance_covers_applies_without_a_charge(
    client_for, paid, ops, org, admin, localstripe, time_machine
):
    time_machine.move_to(START + timedelta(days=14))
    adjust(org, ops, 100_000)
    response = client_for(admin).post(
        reverse("billing:upgrade_confirm", args=[org.slug]),
        {"plan": "enterprise", "quoted_total": "73800"},
        follow=True,
    )
    assert response.redirect_chain[-1][0] == reverse("subscriptions:settings", args=[org.slug])
    assert "$738.00 of it from your account balance" in response.content.decode()
    invoice = Invoice.objects.get(kind="upgrade")
    assert (invoice.status, invoice.credit_applied, invoice.amount_paid) == ("paid", 73_800, 0)
    assert Subscription.objects.get(organisation=org).plan.code == "enterprise"
    assert len(intents(localstripe)) == 1  # the first invoice's only
    assert payment_findings(org) == []


def test_a_declined_upgrade_gives_the_credit_back(paid, ops, org, localstripe):
    adjust(org, ops, 10_000)
    add_card(org, number=CHARGE_FAILS)
    at = START + timedelta(days=2)
    subscription = Subscription.objects.get(organisation=org)
    quote = upgrade_quote(
        subscription=subscription, plan=Plan.objects.get(code="enterprise"), now=at
    )
    invoice = subscription_upgrade(
        organisation=org,
        actor=Actor(user=None),
        plan=Plan.objects.get(code="enterprise"),
        quoted_total=quote.total,
        now=at,
    )
    assert (invoice.credit_applied, invoice.amount_due) == (10_000, quote.total - 10_000)
    assert balance_of(organisation=org, currency="USD") == 0

    payment = invoice_charge(invoice=invoice, now=at, on_session=True)
    assert (payment.status, payment.amount) == ("failed", quote.total - 10_000)
    invoice.refresh_from_db()
    assert (invoice.status, invoice.credit_applied) == ("void", 0)
    assert balance_of(organisation=org, currency="USD") == 10_000
    [returned] = BalanceEntry.objects.filter(kind=Kind.RETURNED)
    assert (returned.amount, returned.invoice, returned.description) == (
        10_000,
        invoice,
        f"Credit returned (balance adjustment): {invoice.number} was voided",
    )
    # Given back once, however often it is asked.
    assert balance_return(invoice=invoice, now=at) == 0
    assert balance_of(organisation=org, currency="USD") == 10_000
    assert payment_findings(org) == []


def test_the_nightly_check_reports_a_balance_that_does_not_add_up(paid, ops, org):
    credit_note(paid, ops, amount=10_000)
    billing_run_issue(now=RENEWAL)
    assert payment_findings(org) == []
    renewal = invoice_numbered(2)

    BalanceEntry.objects.filter(kind=Kind.CREDIT_NOTE).update(remaining=1)
    Invoice.objects.filter(pk=renewal.pk).update(credit_applied=9_000)
    assert sorted(payment_findings(org)) == sorted(
        [
            "A credit of $100.00 keeps $0.01; its uses leave $0.00.",
            "credit_applied says $90.00, the balance entries $100.00.",
        ]
    )


# The PDF -------------------------------------------------------------------------------------


def test_the_pdf_shows_the_credit_applied_below_the_total_then_the_amount_due(paid, ops, org):
    credit_note(paid, ops, amount=10_000)
    billing_run_issue(now=RENEWAL)

    text = pdf_text(invoice_numbered(2))
    lines = [line.strip() for line in text.splitlines()]
    total = next(i for i, line in enumerate(lines) if line.startswith("Total"))
    assert lines[total + 1] == "Credit applied (CN-2026-000001) -$100.00"
    assert lines[total + 2] == "Amount due $882.77"
    assert "$882.77 will be charged to the card on file." in text


def test_the_pdf_of_an_invoice_the_balance_paid_says_so(paid, ops, org):
    credit_note(paid, ops)
    billing_run_issue(now=RENEWAL)

    text = pdf_text(invoice_numbered(2))
    assert "Credit applied (CN-2026-000001) -$982.77" in text
    assert "Amount due $0.00" in text
    assert "Paid in full from your account balance on 28 Feb 2026." in text
    assert "Paid by card" not in text


def test_an_invoice_without_credit_prints_as_before(paid):
    text = pdf_text(paid)
    assert "Credit applied" not in text
    assert "Paid by card" in text


# Settings > Billing > Balance ------------------------------------------------------------------


def balance_page(client, org):
    return client.get(reverse("billing:balance", args=[org.slug]))


def test_the_balance_page_shows_the_balance_and_its_history_newest_first(
    client_for, paid, ops, org, admin
):
    note = credit_note(paid, ops, amount=10_000)
    adjust(org, ops, -2_500, now=START + timedelta(hours=1), reason="Entered twice")
    billing_run_issue(now=RENEWAL)

    response = balance_page(client_for(admin), org)
    assert response.status_code == 200
    body = response.content.decode()
    assert re.search(r'<strong class="balance-amount">\$0\.00</strong>', body)
    rows = re.findall(
        r"<tr>\s*<td>(.*?)</td>\s*<td[^>]*>(.*?)</td>.*?<td [^>]*class=\"num\">(.*?)</td>\s*"
        r"<td [^>]*class=\"num\">(.*?)</td>",
        body,
        re.S,
    )
    assert [
        (date, desc.split("<")[0].strip(), amount, after) for date, desc, amount, after in rows
    ] == [
        ("28 Feb 2026", f"Credit applied ({note.number})", "-$75.00", "$0.00"),
        ("31 Jan 2026", "Adjustment by our team", "-$25.00", "$75.00"),
        ("31 Jan 2026", f"Credit note {note.number} ({paid.number})", "+$100.00", "$100.00"),
    ]
    assert "Entered twice" not in body  # ops' reason stays with ops
    assert f"/settings/billing/credit-notes/{note.number}/pdf/" in body
    assert "/settings/billing/invoices/INV-2026-000002/pdf/" in body


def test_billing_contacts_see_it_members_do_not_and_other_organisations_get_404(
    client_for, paid, ops, org, billing_user, member, outsider
):
    credit_note(paid, ops, amount=10_000)
    assert balance_page(client_for(billing_user), org).status_code == 200
    assert balance_page(client_for(member), org).status_code == 403
    assert balance_page(client_for(outsider), org).status_code == 404


def test_the_tab_shows_once_there_is_or_was_a_balance(client_for, paid, ops, org, admin):
    client = client_for(admin)
    invoices = reverse("billing:invoices", args=[org.slug])
    tab = f'href="{reverse("billing:balance", args=[org.slug])}"'
    assert tab not in client.get(invoices).content.decode()
    empty = balance_page(client, org).content.decode()
    assert "No account balance." in empty

    adjust(org, ops, 500)
    assert tab in client.get(invoices).content.decode()
    adjust(org, ops, -500)  # used up: the history stays
    assert tab in client.get(invoices).content.decode()
    assert "Adjustment by our team" in balance_page(client, org).content.decode()


def test_the_page_costs_the_same_queries_for_a_long_history(client_for, org, admin, ops):
    client = client_for(admin)
    adjust(org, ops, 1_000)

    def queries() -> int:
        with CaptureQueriesContext(connection) as page:
            assert balance_page(client, org).status_code == 200
        return len(page.captured_queries)

    queries()  # the first visit remembers the organisation in the session
    short = queries()
    for n in range(30):
        adjust(org, ops, -10 if n % 2 else 10, now=START + timedelta(minutes=n))
    assert queries() == short


# Ops adjustments ----------------------------------------------------------------------------


def test_taking_more_than_the_balance_is_refused_and_writes_nothing(org, ops):
    adjust(org, ops, 3_000)
    entries, audits = BalanceEntry.objects.count(), AuditEvent.objects.count()

    with pytest.raises(ServiceError, match=r"balance of Acme Trading is \$30.00; taking \$30.01"):
        adjust(org, ops, -3_001)
    assert (BalanceEntry.objects.count(), AuditEvent.objects.count()) == (entries, audits)
    assert balance_of(organisation=org, currency="USD") == 3_000


def test_taking_back_draws_on_the_oldest_credits_first(org, ops):
    older = adjust(org, ops, 3_000, now=START)[0]
    newer = adjust(org, ops, 5_000, now=START + timedelta(days=1))[0]

    uses = adjust(org, ops, -6_000, now=START + timedelta(days=2), reason="Duplicate credit")
    assert [(u.amount, u.source_id, u.reason) for u in uses] == [
        (-3_000, older.pk, "Duplicate credit"),
        (-3_000, newer.pk, "Duplicate credit"),
    ]
    older.refresh_from_db()
    newer.refresh_from_db()
    assert (older.remaining, newer.remaining) == (0, 2_000)
    assert balance_of(organisation=org, currency="USD") == 2_000


def test_an_adjustment_is_audited_with_its_reason(org, ops):
    adjust(org, ops, 2_500, reason="Goodwill: outage on 3 Feb")

    event = AuditEvent.objects.get(action="billing.balance_adjusted")
    assert (event.organisation, event.actor) == (org, ops)
    assert event.changes == {
        "balance": {"old": "$0.00", "new": "$25.00"},
        "amount": {"old": None, "new": "$25.00"},
        "reason": {"old": None, "new": "Goodwill: outage on 3 Feb"},
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reason": "  "}, "Give the reason"),
        ({"amount": 0}, "not zero"),
        ({"amount": 12.5}, "whole number of cents"),
        ({"currency": "EUR"}, "invoiced in USD"),
        ({"currency": "CHF"}, "currencies we sell in"),
        ({"actor": Actor(user=None)}, "by a person"),
    ],
)
def test_bad_adjustments_are_refused_with_a_reason(org, ops, fields, message):
    request = {
        "organisation": org,
        "currency": "USD",
        "amount": 1_000,
        "actor": Actor(user=ops),
        "reason": "Goodwill",
        "now": START,
        **fields,
    }
    with pytest.raises(ServiceError, match=message):
        balance_adjust(**request)
    assert not BalanceEntry.objects.exists()
    assert not AuditEvent.objects.filter(action="billing.balance_adjusted").exists()


def adjust_url():
    return reverse("admin:billing_balanceentry_adjust")


def test_billing_staff_adjust_a_balance_in_admin(client_for, org, ops):
    client = client_for(ops)
    changelist = client.get(reverse("admin:billing_balanceentry_changelist"))
    assert f'href="{adjust_url()}"' in changelist.content.decode()
    assert client.get(adjust_url() + "?organisation=acme").status_code == 200

    response = client.post(
        adjust_url(),
        {"organisation": "acme", "currency": "USD", "amount": "25.00", "reason": "Goodwill"},
        follow=True,
    )
    assert response.status_code == 200
    assert "Balance of Acme Trading adjusted by $25.00; it is now $25.00." in (
        response.content.decode()
    )
    entry = BalanceEntry.objects.get()
    assert (entry.kind, entry.amount, entry.remaining, entry.reason, entry.created_by) == (
        Kind.ADJUSTMENT,
        2_500,
        2_500,
        "Goodwill",
        ops,
    )
    assert AuditEvent.objects.get(action="billing.balance_adjusted").changes["reason"] == {
        "old": None,
        "new": "Goodwill",
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reason": ""}, "This field is required."),
        ({"organisation": "nobody"}, "No organisation has the slug"),
        ({"amount": "0"}, "Give an amount other than zero."),
        ({"amount": "ten"}, "Enter a number."),
        ({"amount": "1.005"}, "no more than 2 decimal places"),
        ({"currency": "EUR"}, "Acme Trading is invoiced in USD"),
        ({"amount": "-0.01"}, "would take it below zero"),
    ],
)
def test_bad_input_in_admin_is_refused_and_writes_nothing(client_for, org, ops, fields, message):
    data = {"organisation": "acme", "currency": "USD", "amount": "25.00", "reason": "Why", **fields}
    response = client_for(ops).post(adjust_url(), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not BalanceEntry.objects.exists()
    assert not AuditEvent.objects.filter(action="billing.balance_adjusted").exists()


def test_read_only_support_staff_cannot_adjust(client_for, org):
    client = client_for(staff(READ_ONLY))
    changelist = client.get(reverse("admin:billing_balanceentry_changelist"))
    assert changelist.status_code == 200
    assert adjust_url() not in changelist.content.decode()
    assert client.get(adjust_url()).status_code == 403
    data = {"organisation": "acme", "currency": "USD", "amount": "25.00", "reason": "Why"}
    assert client.post(adjust_url(), data).status_code == 403
    assert not BalanceEntry.objects.exists()


# Two at once --------------------------------------------------------------------------------


def at_once(*calls):
    """Run the calls in threads started together; what each returned or the message it
    was refused with."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, call):
        barrier.wait()
        try:
            results[i] = call()
        except ServiceError as error:
            results[i] = error.message
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.django_db(transaction=True)
def test_two_adjustments_at_once_cannot_overdraw(org, ops):
    adjust(org, ops, 10_000)

    results = at_once(lambda: adjust(org, ops, -6_000), lambda: adjust(org, ops, -6_000))
    assert sum(isinstance(r, list) for r in results) == 1
    assert any(isinstance(r, str) and "below zero" in r for r in results)
    assert balance_of(organisation=org, currency="USD") == 4_000


@pytest.mark.django_db(transaction=True)
def test_two_invoices_issued_at_once_spend_the_credit_once(org, ops):
    adjust(org, ops, 10_000)
    invoices = [issued_invoice(organisation=org, currency="USD") for _ in range(2)]

    def apply(invoice):
        with transaction.atomic():
            return balance_apply([invoice], now=START)

    at_once(lambda: apply(invoices[0]), lambda: apply(invoices[1]))
    applied = [Invoice.objects.get(pk=i.pk).credit_applied for i in invoices]
    assert sorted(applied) == [0, 10_000]
    assert balance_of(organisation=org, currency="USD") == 0
    assert BalanceEntry.objects.filter(kind=Kind.APPLIED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_renewal_and_an_adjustment_at_once_spend_the_credit_once(paid, ops, org):
    credit_note(paid, ops, amount=10_000)

    results = at_once(lambda: billing_run_issue(now=RENEWAL), lambda: adjust(org, ops, -10_000))
    renewal = invoice_numbered(2)
    adjusted = isinstance(results[1], list)
    assert renewal.credit_applied == (0 if adjusted else 10_000)
    assert adjusted or "below zero" in results[1]
    assert balance_of(organisation=org, currency="USD") == 0
    assert BalanceEntry.objects.filter(remaining__lt=0).count() == 0


# Deletion after cancellation -------------------------------------------------------------------


def test_deleting_the_organisations_data_keeps_its_balance_with_the_invoices(paid, ops, org):
    credit_note(paid, ops, amount=10_000)
    billing_run_issue(now=RENEWAL)
    adjust(org, ops, 500)
    kept = list(BalanceEntry.objects.filter(organisation=org).values_list("pk", "amount"))
    assert len(kept) == 3

    organisation_data_delete(
        organisation=org, kind=DeletionRecord.Kind.CANCELLATION, actor=None, now=NEXT_RENEWAL
    )
    org.refresh_from_db()
    assert org.status == Organisation.Status.DELETED
    assert list(BalanceEntry.objects.filter(organisation=org).values_list("pk", "amount")) == kept
    assert invoice_numbered(2).credit_applied == 10_000
