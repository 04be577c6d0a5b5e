"""The ledger learns credits (billing.ledger): credit notes of each outcome hold every rule, and
each credit rule, broken on purpose through raw SQL, is reported."""

import pytest
from django.contrib.auth.models import Group
from django.db import connection

from accounts.audit import Actor
from billing.credit_notes import credit_note_issue
from billing.ledger import ledger_check
from billing.models import CreditNote, Invoice
from support.staff import BILLING
from tests.accounts.factories import UserFactory
from tests.billing.helpers import START, subscribe

pytestmark = pytest.mark.django_db

Outcome = CreditNote.Outcome


@pytest.fixture
def credited(localstripe, org, admin):
    """Acme's first invoice ($982.77) paid by card, then credited three ways: $100.00 refunded
    to the card, $50.00 to the balance, $20.00 refunded outside."""
    ops = UserFactory(is_staff=True)
    ops.groups.add(Group.objects.get(name=BILLING))
    invoice = subscribe(org)
    for amount, outcome, reference in (
        (10_000, Outcome.REFUND, ""),
        (5_000, Outcome.BALANCE, ""),
        (2_000, Outcome.REFUNDED_OUTSIDE, "BT-9"),
    ):
        credit_note_issue(
            invoice=invoice,
            actor=Actor(user=ops),
            reason=CreditNote.Reason.SERVICE_ISSUE,
            outcome=outcome,
            amount=amount,
            reference=reference,
            now=START,
        )
    return invoice


def sql(statement, params=()):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def messages(rule):
    return [v.message for v in ledger_check(now=START) if v.rule == rule]


def test_credit_notes_of_every_outcome_hold_every_rule(credited):
    assert CreditNote.objects.count() == 3
    assert ledger_check(now=START) == []


def test_amount_credited_that_disagrees_with_the_credit_notes(credited):
    sql("UPDATE billing_invoice SET amount_credited = amount_credited - 1")
    assert any("amount_credited says" in m for m in messages("credit_notes"))


def test_credited_more_than_invoiced(credited):
    sql("UPDATE billing_creditnoteline SET amount = amount + 100000")
    sql("UPDATE billing_creditnote SET subtotal = subtotal + 100000, total = total + 100000")
    found = messages("credit_notes")
    assert any("of an invoice of" in m for m in found)
    assert any("Line 1 is credited" in m for m in found)


def test_lines_that_do_not_add_up_to_the_credit_note(credited):
    sql("UPDATE billing_creditnoteline SET tax_amount = tax_amount + 1 WHERE position = 1")
    assert any("Lines add up to" in m for m in messages("credit_notes"))


def test_more_given_back_than_was_paid(credited):
    sql("UPDATE billing_invoice SET amount_paid = 1000")
    assert any("went back to the customer" in m for m in messages("credit_notes"))


def test_refunded_more_than_the_payment(credited):
    sql("UPDATE billing_refund SET amount = 10000000")
    assert any("Refunded" in m and "of a payment of" in m for m in messages("refunds"))


def test_a_card_credit_note_without_its_refund(credited):
    sql("DELETE FROM billing_refund")
    assert any("0 refund(s)" in m for m in messages("refunds"))


def test_a_gap_in_credit_note_numbers(credited):
    sql("UPDATE billing_creditnote SET number = 'CN-2026-000009' WHERE number = 'CN-2026-000002'")
    assert any("a gap or a duplicate" in m for m in messages("numbering"))


def test_balance_that_is_not_its_movements(credited):
    sql("UPDATE billing_balanceentry SET remaining = remaining - 1")
    assert any("keeps $49.99; its uses leave $50.00" in m for m in messages("balance"))


def test_invoice_showing_credit_never_applied(credited):
    sql("UPDATE billing_invoice SET credit_applied = 5")
    assert any("credit_applied says $0.05" in m for m in messages("balance"))


def test_paid_invoice_not_settled_by_its_figures(credited):
    sql("UPDATE billing_invoice SET amount_credited_unpaid = 7 WHERE status = 'paid'")
    found = messages("payments")
    assert any(m.startswith("Paid, but payments") for m in found)
    assert Invoice.objects.get().status == "paid"
