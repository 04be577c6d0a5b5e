"""A simulated year: eight organisations through 366 days of the real
scheduled jobs, with a seeded random walk of what their people and ops do (devkit/simulation.py);
after every simulated day every ledger invariant holds.

To stay fast the walk is busier than the bench's (activity 2.5) and the jobs run only on days
when a money job has work (tick_every_day=False; the housekeeping jobs still run weekly): a
day skipped is a day on which the billing run, overage, charge, dunning and deletion jobs
would have found nothing, and the ledger, checked every day, reports any renewal left late.
"""

import pytest
import stripe

from billing.ledger import ledger_check
from devkit.simulation import Simulation

pytestmark = pytest.mark.django_db


def test_a_simulated_year_keeps_the_books(localstripe):
    stripe.max_network_retries = 0  # a retried POST repeats its side effects in localstripe
    simulation = Simulation(organisations=8, days=366, seed=2, activity=2.5, tick_every_day=False)

    stats = simulation.run(check=lambda now: ledger_check(now=now))

    assert simulation.problems == []
    assert stats.days == 366
    # The walk went through what a year holds, so the invariants were checked on all of it.
    summary = stats.summary()
    assert summary["organisations"] == 8
    assert summary["invoices"]["paid"] >= 40
    assert summary["invoices"]["upgrade_paid"] > 0
    assert summary["invoices"]["overage_only"] > 0  # annual plans above their limit
    assert summary["invoices"]["by_transfer"] > 0
    assert summary["invoices"]["uncollectible"] > 0
    assert summary["payments"]["failed"] > 0
    assert summary["payments"]["manual"] > 0  # bank transfers recorded by ops
    assert summary["plan_changes"]["upgrades"] > 0
    assert summary["plan_changes"]["downgrades"] > 0
    assert summary["dunning_cases"] > 0
    assert summary["suspended_cases"] > 0
    assert summary["overage_charges"] > summary["invoices"]["overage_only"]  # monthly ones too
    assert summary["records"] > 10_000
    for move in (
        "first_payment_failed",
        "upgrade_declined",
        "upgrade_quote_changed",
        "undo_downgrade",
        "cancel",
        "undo_cancel",
        "resubscribe",
        "switch_to_annual",
        "card_goes_bad",
        "replace_card",
        "retry_payment",
        "record_transfer",
        "extend_grace",
        "write_off",
        "(before the billing run)",
        "upgrade_carried",  # under the minimum charge: applied, carried to the renewal
        "card_that_asks",  # 3-D Secure cards, saved with their setup challenge
        "confirm_payment",  # the email's link to Confirm payment, followed
        "credit_note",  # ops correct an invoice
        "dashboard_refund",  # ops refund in the Stripe dashboard
        "dispute",  # a cardholder disputes a charge
        "dispute_decided",  # ... and the bank decides
    ):
        assert stats.moves[move] > 0, move
    # Credit notes of every outcome, refunds made, the balance applied, disputes won and lost.
    assert set(summary["credit_notes"]) == {
        "refund",
        "balance",
        "refunded_outside",
        "reduce_due",
        "refunded_in_stripe",
    }, summary["credit_notes"]
    assert summary["refunds"].get("succeeded", 0) > 0
    assert summary["balance"]["applied"] < 0
    assert {"won", "lost"} <= set(summary["disputes"]), summary["disputes"]
    # Payments the bank asked the customer to authenticate: at checkout, on Upgrade Plan and
    # off-session, some paid once confirmed and some not.
    asked = summary["needed_authentication"]
    for where in ("checkout", "upgrade", "off-session"):
        assert any(key.startswith(f"{where}: ") for key in asked), (where, asked)
    assert any(key.endswith(": succeeded") for key in asked), asked
    assert any(not key.endswith(": succeeded") for key in asked), asked
