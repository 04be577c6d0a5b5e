"""Postgres restarted under the billing run: no invoice lost or duplicated.

A private PostgreSQL cluster (tests/faults/private_services.py; the shared one is never
touched) gets the schema (`manage.py migrate`) and SUBSCRIPTIONS subscriptions whose period
has ended. `manage.py tick --job billing_run` runs against it in a subprocess, as cron or
beat would, with the real settings (Celery not eager: the PDF tasks go to a private Redis
nobody works, so the run is the billing run alone).

To restart Postgres with some invoices committed and a batch in flight, whatever the speed
of the machine, the test waits for the first batch to commit, then takes the row lock of the
year's invoice-number sequence: the runner's next batch claims its subscriptions, moves them
to their next period and waits for that lock inside its transaction. Then Postgres restarts.
The runner dies with a connection error (accepted); what it had not committed must be gone
whole. Run again, every due subscription has exactly one invoice for its period, the
numbers are gapless 1..N, the sequence row says N, and `manage.py check_ledger` is clean.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from tests.faults.private_services import private_postgres, private_redis

# Five batches of the billing run job (500 each): once the first has committed there is work
# left for both runners of the concurrent test, so neither can finish the run before the
# numbering lock is taken (with three, both sometimes did, and nobody was left waiting).
SUBSCRIPTIONS = 2200
DUE = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)  # periods end from here to 23:00 that day
NOW = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # the billing run's `now`


# The schema, then organisations with monthly subscriptions whose first period (anchored on
# 1 February, 00:00 to 23:00) ended on 1 March: the billing run owes each its second period's
# invoice. One process for both: Django starts in about 3 s here.
SETUP = """
import sys
from datetime import datetime, timedelta
import django
django.setup()
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
from accounts.models import Organisation
from subscriptions.models import Plan, Subscription
from tests.subscriptions.factories import SubscriptionFactory

count = int(sys.argv[1])
plans = list(Plan.objects.filter(code__in=["standard", "professional"]).order_by("rank"))
organisations = Organisation.objects.bulk_create(
    Organisation(name=f"Customer {n}", slug=f"customer-{n}", primary_email=f"b{n}@customer.test")
    for n in range(count)
)
# Active monthly USD subscriptions: their first period runs from the anchor to a month later.
subscriptions = Subscription.objects.bulk_create(
    SubscriptionFactory.build(
        organisation=organisation,
        plan=plans[n % len(plans)],
        anchor_at=datetime.fromisoformat("2026-02-01T00:00:00+00:00") + timedelta(hours=n % 24),
    )
    for n, organisation in enumerate(organisations)
)
print(len(subscriptions))
"""


class Cluster:
    """The private Postgres and Redis, and a database with the schema and due subscriptions
    to copy for each test."""

    def __init__(self, pg, redis, folder: Path) -> None:
        self.pg = pg
        self.redis = redis
        self.folder = folder
        self._databases = 0

    def env(self, database: str) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "billing_portal.settings",
            "DEBUG": "1",
            "DATABASE_URL": self.pg.url_for(database),
            "REDIS_URL": self.redis.url,
            "CELERY_BROKER_URL": self.redis.url,
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "STRIPE_API_BASE": "http://127.0.0.1:9",  # the billing run never calls Stripe
            "RUN_DIR": str(self.folder),
            "EMAIL_FILE_PATH": str(self.folder / "mail"),
            "MEDIA_ROOT": str(self.folder / "media"),
            "LOG_LEVEL": "WARNING",
        }

    def manage(self, database: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(  # noqa: S603 - our interpreter and manage.py
            [sys.executable, "manage.py", *args],
            cwd=settings.BASE_DIR,
            env=self.env(database),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, database: str, *args: str, timeout: float = 120) -> tuple[int, str, str]:
        process = self.manage(database, *args)
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err

    def copy(self) -> str:
        """A new database with the schema and the due subscriptions; its name."""
        self._databases += 1
        name = f"run{self._databases}"
        with self.connect("postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "loaded"')
        return name

    def connect(self, database: str, *, autocommit: bool = False) -> psycopg.Connection:
        return psycopg.connect(self.pg.url_for(database), autocommit=autocommit)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("pg-restart")
    # Durable: the crash test counts committed invoices after an immediate stop.
    with private_postgres(durable=True) as pg, private_redis() as redis:
        cluster = Cluster(pg, redis, folder)
        with cluster.connect("postgres") as connection:
            # Else a crash loses COMMITs whose WAL was not yet written (seen once in CI).
            assert scalar(connection, "SHOW synchronous_commit") == "on"
        pg.create_database("loaded")
        process = subprocess.run(  # noqa: S603
            [sys.executable, "-c", SETUP, str(SUBSCRIPTIONS)],
            cwd=settings.BASE_DIR,
            env=cluster.env("loaded"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert process.returncode == 0, process.stderr
        assert process.stdout.split() == [str(SUBSCRIPTIONS)]
        yield cluster


def billing_run(cluster: Cluster, database: str) -> subprocess.Popen:
    return cluster.manage(database, "tick", "--now", NOW.isoformat(), "--job", "billing_run")


def scalar(connection: psycopg.Connection, query: str, *params):
    return connection.execute(query, params).fetchone()[0]


def wait_until(check, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)


@contextmanager
def numbering_locked_after_first_batch(
    cluster: Cluster, database: str, runners: list[subprocess.Popen]
) -> Iterator[int]:
    """Once a batch is committed, hold the invoice-number row lock until the block ends and
    wait until every runner still going waits for it, holding its batch. Yields how many
    invoices were committed by then."""
    watch = cluster.connect(database, autocommit=True)
    lock = cluster.connect(database)
    try:

        def a_batch_committed() -> bool:
            for runner in runners:
                assert runner.poll() is None, runner.communicate()
            return scalar(watch, "SELECT count(*) FROM billing_invoice") > 0

        wait_until(a_batch_committed, timeout=60, what="the first batch")
        lock.execute("SELECT last_number FROM billing_invoicesequence WHERE year = 2026 FOR UPDATE")
        mine = scalar(lock, "SELECT pg_backend_pid()")

        def runners_waiting() -> bool:
            waiting = scalar(
                watch,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND wait_event_type = 'Lock' AND pid <> %s",
                database,
                mine,
            )
            return waiting >= sum(runner.poll() is None for runner in runners) > 0

        wait_until(runners_waiting, timeout=60, what="a runner waiting with a batch in flight")
        committed = scalar(watch, "SELECT count(*) FROM billing_invoice")
        yield committed
    finally:
        for connection in (lock, watch):
            with suppress(psycopg.Error):
                connection.close()


def failed_with_a_connection_error(runner: subprocess.Popen) -> bool:
    out, err = runner.communicate(timeout=60)
    if runner.returncode == 0:
        return False
    assert "billing_run: FAILED: " in err, err
    assert any(name in err for name in ("OperationalError", "InterfaceError")), err
    return True


def assert_after_the_crash(connection: psycopg.Connection, committed: int) -> None:
    """What was committed is whole; what was in flight is gone whole."""
    assert scalar(connection, "SELECT count(*) FROM billing_invoice") == committed
    # Every subscription moved on has its invoice; every other one is still due.
    assert (
        scalar(
            connection,
            "SELECT count(*) FROM subscriptions_subscription s WHERE s.current_period_end > %s "
            "AND NOT EXISTS (SELECT 1 FROM billing_invoice i WHERE i.subscription_id = s.id)",
            NOW,
        )
        == 0
    )
    assert (
        scalar(
            connection,
            "SELECT count(*) FROM subscriptions_subscription WHERE current_period_end <= %s",
            NOW,
        )
        == SUBSCRIPTIONS - committed
    )
    assert (
        scalar(
            connection,
            "SELECT count(*) FROM billing_invoice i WHERE NOT EXISTS "
            "(SELECT 1 FROM billing_invoiceline l WHERE l.invoice_id = i.id)",
        )
        == 0
    )


def assert_every_period_invoiced_once(cluster: Cluster, database: str) -> None:
    with cluster.connect(database) as connection:
        # One invoice per subscription, for the period it is now in, which follows the due one.
        assert connection.execute(
            "SELECT count(*), count(DISTINCT i.subscription_id) FROM billing_invoice i "
            "JOIN subscriptions_subscription s ON s.id = i.subscription_id "
            "WHERE i.period_start = s.current_period_start "
            "AND i.period_end = s.current_period_end AND i.period_start <= %s",
            (NOW,),
        ).fetchone() == (SUBSCRIPTIONS, SUBSCRIPTIONS)
        assert scalar(connection, "SELECT count(*) FROM billing_invoice") == SUBSCRIPTIONS
        assert (
            scalar(
                connection,
                "SELECT count(*) FROM subscriptions_subscription WHERE current_period_end <= %s",
                NOW,
            )
            == 0
        )
        numbers = [row[0] for row in connection.execute("SELECT number FROM billing_invoice")]
        assert sorted(numbers) == [f"INV-2026-{n:06d}" for n in range(1, SUBSCRIPTIONS + 1)]
        assert connection.execute(
            "SELECT year, last_number FROM billing_invoicesequence"
        ).fetchall() == [(2026, SUBSCRIPTIONS)]
    # Lines, tax and totals of every invoice, the periods and the numbering, by the book.
    code, out, err = cluster.run(database, "check_ledger", "--now", NOW.isoformat())
    assert (code, out.strip()) == (0, "Ledger OK: no violation."), err


def assert_rerun_completes_the_run(cluster, database, committed):
    """After the restart: what committed is whole, and a rerun issues exactly the rest."""
    assert 0 < committed < SUBSCRIPTIONS
    with cluster.connect(database) as connection:
        assert_after_the_crash(connection, committed)

    rerun = billing_run(cluster, database)
    out, err = rerun.communicate(timeout=120)
    assert (rerun.returncode, out.strip()) == (
        0,
        f"billing_run: {SUBSCRIPTIONS - committed} invoice(s) issued",
    ), err
    assert_every_period_invoiced_once(cluster, database)


def test_postgres_restarted_under_the_billing_run(cluster):
    database = cluster.copy()
    runner = billing_run(cluster, database)

    with numbering_locked_after_first_batch(cluster, database, [runner]) as committed:
        cluster.pg.restart(mode="fast")

    assert failed_with_a_connection_error(runner)
    assert_rerun_completes_the_run(cluster, database, committed)


def test_postgres_crashed_under_two_concurrent_billing_runs(cluster):
    database = cluster.copy()
    runners = [billing_run(cluster, database) for _ in range(2)]

    with numbering_locked_after_first_batch(cluster, database, runners) as committed:
        cluster.pg.restart(mode="immediate")  # a crash: recovery from the WAL at start

    failed = [failed_with_a_connection_error(runner) for runner in runners]
    assert any(failed)
    assert_rerun_completes_the_run(cluster, database, committed)
