"""Two simulated years: eight organisations each through 366 days of the real
scheduled jobs, with a seeded random walk of what their people and ops do (devkit/simulation.py);
after every simulated day every ledger invariant holds. Between them the two years go through
everything the walk can do (one seed alone misses a rare move or two).

To stay fast the walk is busier than the bench's (activity 2.5) and the jobs run only on days
when a money job has work (tick_every_day=False; the housekeeping jobs still run weekly): a
day skipped is a day on which the billing run, overage, charge, dunning and deletion jobs
would have found nothing, and the ledger, checked every day, reports any renewal left late.
"""

from collections import Counter
from datetime import timedelta

import pytest
import stripe
from django.db import transaction
from django.utils import timezone

from billing.ledger import ledger_check
from billing.models import ReconciliationDifference
from billing.reconciliation import reconcile
from devkit.simulation import Simulation

pytestmark = pytest.mark.django_db


# Two seeds that, between them, make every move below.
SEEDS = (3, 4)


class _YearDone(Exception):
    """Carries a year's figures out of the savepoint that rolls its rows back."""


def a_year(seed: int):
    """One simulated year, its rows rolled back once its figures are read, so that the next
    year starts from an empty database: (problems, stats, summary, open differences with
    Stripe)."""
    try:
        with transaction.atomic():
            simulation = Simulation(
                organisations=8, days=366, seed=seed, activity=2.5, tick_every_day=False
            )
            stats = simulation.run(check=lambda now: ledger_check(now=now))
            # Stripe stamps its objects with the real clock: reconcile everything the year
            # made there, an hour from now, when all of it has settled.
            reconcile(now=timezone.now() + timedelta(hours=1), days=1)
            differences = list(
                ReconciliationDifference.objects.filter(resolved_at__isnull=True).values_list(
                    "kind", "processor_id"
                )
            )
            raise _YearDone(simulation.problems, stats, stats.summary(), differences)
    except _YearDone as done:
        return done.args


def test_simulated_years_keep_the_books(localstripe):
    stripe.max_network_retries = 0  # a retried POST repeats its side effects in localstripe
    years = [a_year(seed) for seed in SEEDS]

    for problems, stats, summary, differences in years:
        assert problems == []
        assert differences == []  # our books and Stripe's agree
        assert stats.days == 366
        assert summary["organisations"] == 8
        assert summary["invoices"]["paid"] >= 40
        assert summary["records"] > 10_000
        # Monthly plans' overage is on their renewal invoices, annual plans' on their own.
        assert summary["overage_charges"] > summary["invoices"]["overage_only"]
    summaries = [summary for _, _, summary, _ in years]

    def some(figure) -> bool:
        return any(figure(summary) for summary in summaries)

    # The walks went through what a year holds, so the invariants were checked on all of it.
    assert some(lambda s: s["invoices"]["upgrade_paid"] > 0)
    assert some(lambda s: s["invoices"]["overage_only"] > 0)  # annual plans above their limit
    assert some(lambda s: s["invoices"]["by_transfer"] > 0)
    assert some(lambda s: s["invoices"]["uncollectible"] > 0)
    assert some(lambda s: s["payments"]["failed"] > 0)
    assert some(lambda s: s["payments"]["manual"] > 0)  # bank transfers recorded by ops
    assert some(lambda s: s["plan_changes"]["upgrades"] > 0)
    assert some(lambda s: s["plan_changes"]["downgrades"] > 0)
    assert some(lambda s: s["dunning_cases"] > 0)
    assert some(lambda s: s["suspended_cases"] > 0)
    moves = sum((stats.moves for _, stats, _, _ in years), Counter())
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
        "goodwill_credit",  # ... or make a gesture on a cancelled annual plan
        "dashboard_refund",  # ops refund in the Stripe dashboard
        "dispute",  # a cardholder disputes a charge
        "dispute_decided",  # ... and the bank decides
    ):
        assert moves[move] > 0, move
    # Credit notes of every outcome, refunds made, the balance applied, disputes won and lost.
    outcomes = set().union(*(summary["credit_notes"] for summary in summaries))
    assert outcomes == {"refund", "balance", "refunded_outside", "reduce_due", "refunded_in_stripe"}
    assert some(lambda s: s["refunds"].get("succeeded", 0) > 0)
    assert some(lambda s: (s["balance"]["applied"] or 0) < 0)
    assert some(lambda s: {"won", "lost"} <= set(s["disputes"]))
    # Payments the bank asked the customer to authenticate: at checkout, on Upgrade Plan and
    # off-session, some paid once confirmed and some not.
    asked = set().union(*(summary["needed_authentication"] for summary in summaries))
    for where in ("checkout", "upgrade", "off-session"):
        assert any(key.startswith(f"{where}: ") for key in asked), (where, asked)
    assert any(key.endswith(": succeeded") for key in asked), asked
    assert any(not key.endswith(": succeeded") for key in asked), asked
