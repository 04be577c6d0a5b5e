"""A simulated year, bigger than the test: many organisations through a year of
daily `tick`s with the random walk of devkit/simulation.py (sign-ups, upgrades, downgrades, cycle
switches, cancellations and undos, card failures and recoveries, bank transfers, usage above and
below the limits), every ledger invariant checked after every simulated day.

Prints the organisations, invoices and payments made, simulated days per second, and every
violation found (expected: none), each once with the day it was first seen; a job or a move
that raised is reported the same way. Exits non-zero when anything was found.

Runs in a scratch database `billing_bench_year` (created and dropped here) against the running
localstripe (nobody may reset it meanwhile: a test run's DELETE /_config/data would take the
simulated customers away; STRIPE_API_BASE may point at a private one, see
scripts/localstripe_server.py):

    make services-start && source scripts/env.sh && DEBUG=1 \\
        .venv/bin/python bench/simulate_year.py [--organisations 200] [--days 366] [--seed 1]
"""

import argparse
import os
import sys
import time
from collections import defaultdict

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--organisations", type=int, default=200)
# 366: the annual terms begun on the first day renew on the last.
parser.add_argument("--days", type=int, default=366)
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--activity", type=float, default=1.0, help="scales every move's chance")
parser.add_argument("--database", default="billing_bench_year", help="scratch database name")
args = parser.parse_args()

# Emails go nowhere, PDFs render in-process on commit (stubbed by the simulation), and the
# jobs' INFO lines stay out of the figures.
os.environ["EMAIL_BACKEND"] = "django.core.mail.backends.dummy.EmailBackend"
os.environ.setdefault("LOG_LEVEL", "WARNING")

from scratch import scratch_database  # noqa: E402

scratch_database(args.database)

from billing_portal.celery import app  # noqa: E402

# Tasks queued on commit (the PDFs of new invoices) run here rather than on a broker some
# worker of another database might consume.
app.conf.task_always_eager = True

from django.db import connection  # noqa: E402

from billing.ledger import ledger_check  # noqa: E402
from devkit.simulation import Simulation  # noqa: E402

# The Stripe customer's idempotency key is "customer-organisation-<id>" and localstripe, unlike
# Stripe (24 hours), remembers keys until it restarts: ids of this run must not repeat those of
# an earlier run (or of the development database) against the same localstripe.
with connection.cursor() as cursor:
    cursor.execute(
        "SELECT setval(pg_get_serial_sequence('accounts_organisation', 'id'), %s)",
        [int(time.time() * 10) % 10**10],
    )


def main() -> int:
    simulation = Simulation(
        organisations=args.organisations,
        days=args.days,
        seed=args.seed,
        activity=args.activity,
        stop_on_problem=False,
        record_errors=True,
    )
    began = time.perf_counter()
    checking = 0.0
    last_report = began

    def check(now):
        nonlocal checking, last_report
        started = time.perf_counter()
        found = ledger_check(now=now)
        checking += time.perf_counter() - started
        if started - last_report > 30:
            last_report = started
            done = simulation.stats.days
            print(f"  day {done}/{args.days}, {done / (started - began):.1f} days/s", flush=True)
        return found

    stats = simulation.run(check=check)
    summary = stats.summary()
    invoices, payments = summary["invoices"], summary["payments"]
    print(f"organisations          {summary['organisations']:,}  {summary['subscriptions']}")
    print(
        f"invoices               {invoices['total']:,} (paid {invoices['paid']:,}, open "
        f"{invoices['open']:,}, void {invoices['void']:,}, uncollectible "
        f"{invoices['uncollectible']:,}; upgrades paid {invoices['upgrade_paid']:,}, "
        f"overage-only {invoices['overage_only']:,}, "
        f"bank transfer / PO {invoices['by_transfer']:,})"
    )
    print(
        f"payments               {payments['total']:,} (succeeded {payments['succeeded']:,}, "
        f"failed {payments['failed']:,}, recorded by ops {payments['manual']:,})"
    )
    print(f"needed authentication  {summary['needed_authentication']}")
    print(
        f"credit notes           {summary['credit_notes']} "
        f"({summary['goodwill_credit_notes']} goodwill); refunds {summary['refunds']}"
    )
    print(f"disputes               {summary['disputes']}")
    print(f"customer balance       {summary['balance']}")
    print(
        f"plan changes applied   {summary['plan_changes']['upgrades']:,} upgrades, "
        f"{summary['plan_changes']['downgrades']:,} downgrades"
    )
    print(
        f"dunning                {summary['dunning_cases']:,} cases, "
        f"{summary['suspended_cases']:,} reached suspension"
    )
    print(
        f"usage                  {summary['records']:,} Sync Info records in "
        f"{summary['batches']:,} batches; {summary['overage_charges']:,} overage charges"
    )
    print(f"moves                  {summary['moves']}")
    print(f"refused by the product {summary['refused']}")
    print(
        f"simulated days         {stats.days} in {stats.seconds:.1f} s: "
        f"{stats.days / stats.seconds:.2f} days/s ({stats.ticks} ticks; ledger checks "
        f"{checking:.1f} s of it)"
    )
    slowest = stats.job_seconds.most_common(4)
    print(f"slowest jobs           {', '.join(f'{name} {s:.1f} s' for name, s in slowest)}")
    first_seen = {}
    days_seen = defaultdict(int)
    for at, problem in simulation.problems:
        key = (problem.rule, problem.subject) if hasattr(problem, "rule") else problem
        first_seen.setdefault(key, (at, problem))
        days_seen[key] += 1
    print(f"violations             {len(first_seen)}")
    for key, (at, problem) in first_seen.items():
        text = (
            f"{problem.rule} {problem.subject}: {problem.message}"
            if hasattr(problem, "rule")
            else problem
        )
        print(f"  first {at:%Y-%m-%d}, on {days_seen[key]} day(s): {text}")
    return 1 if first_seen else 0


if __name__ == "__main__":
    sys.exit(main())
