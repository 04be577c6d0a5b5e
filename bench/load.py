"""Load benchmark: signed-in users browsing the billing pages, the machine
API at the same time, and the floors (a trivial view, anonymous and signed in), against gunicorn;
or, --mode capacity, the page views/s the machine serves within p95 <= 100 ms.

1. Seeds a scratch database `billing_bench_load` (bench/scratch.py): --organisations
   organisations, each with an Admin who signs in with a password, a Billing contact and a
   Member; a card on file and Billing Information (six countries: VAT, reverse charge, GST, no
   tax); a monthly subscription started 12 to 24 months ago with every period's invoice issued
   and paid (13 to 25 invoices each, with their payments); the invoice PDFs stored; two
   environments with four ProcessFlows and an API key; --sync-rows Sync Info rows in total over
   the current usage month, sent through the ingest service in batches of 1,000 (COPY, usage
   counters, idempotency rows), unevenly: from 1/10 of the busiest organisation's rows up,
   more than a page (50 rows) for every one.
   PDFs: WeasyPrint renders about ten a second, so one PDF per country profile is rendered by
   billing.pdf from a real invoice of the set and its bytes are stored for every invoice of that
   profile. The download reads one stored bytea of the same size either way (PostgreSQL keeps
   each row's own copy; nothing is shared or cached between rows), so what is measured is the
   same; only the printed contents differ.
   Rows are written with bulk inserts shaped as the billing services write them (numbers from
   the per-year sequence, tax from billing.tax.tax_for, a snapshot of the billing details):
   charging hundreds of invoices through the shared localstripe would add nothing the pages
   read.
2. Collects the static files into a temporary directory and starts gunicorn on a free port with
   bench/load_settings.py (the production settings, DEBUG off, SSL redirect on, secure cookies;
   plus the floors' URLs, bench/load_urls.py). As the production image runs it: gthread
   workers, --workers processes (default 2 x cores - 1) of --threads 4 threads. Measured on 2
   cores (--mode capacity --servers sync:5,sync:3,gthread:2x4,gthread:3x4): 3 x 4 threads
   served as many page views/s as 3 sync workers and more than 5 (more processes than that
   only queue on the cores Postgres and the load client also need), and a thread waiting on
   Postgres or Stripe holds only itself. --threads 1 switches to sync workers (which close the
   connection after each response); --servers runs everything against each setting in turn.
3. Runs locust headless (bench/load_locustfile.py, FastHttpUser; what each user does is in its
   docstring): --users browsing Admins (think time 1-3 s between steps, uniform), --api-users
   runtimes posting 100-record batches, and users/5 anonymous floor users with the same think
   time (the browsing loop has five steps, so the floor gets about the rate of each page), and
   as many signed-in floor users (signed in as the Admins are; the view of bench/load_urls.py
   behind tenant_view: middleware, session, user, membership lookup, nothing else). The
   measurement starts --warmup seconds after the last browser signed in (the sign-ins hash
   passwords) and lasts --duration seconds.
4. Prints per request name: requests measured, errors (over the whole run, sign-in included),
   p50/p95/p99 (exact, from every raw locust response time of the measurement window, nearest
   rank), p95 against the signed-in floor's p95, and PASS/FAIL. Targets: no error anywhere;
   each page's p95 at most 3x the signed-in floor's p95 and at most 50 ms (the API batch is
   not a page: errors only; the anonymous floor is shown for comparison). Exits 1 when a
   target is missed.
   --mode capacity (or both): no think time; the browsing Admins are raised to each count of
   --steps in turn, each step measured --step-seconds after its users signed in: page views/s,
   p50/p95/p99, errors, and the CPU of the machine, gunicorn and locust (which shares the
   cores). The capacity is the most page views/s of a step with p95 <= 100 ms and no error.
   Then the same for the signed-in floor alone.
   --profile USERS: for each page (and the signed-in floor), USERS users open only it with no
   think time while py-spy samples every gunicorn worker for 10 s; prints where the workers'
   time goes (Postgres round trips, ORM, templates, gunicorn) and the top functions.
5. Stops gunicorn and drops the database, unless --keep (then both stay up and the script says
   how to run locust against them again and how to stop them).

    make services-start && source scripts/env.sh && .venv/bin/python bench/load.py \\
        [--users 50] [--duration 300] [--workers N] [--threads 1] [--keep] \\
        [--mode think|capacity|both] [--steps 1,2,4,8] [--step-seconds 15] [--profile 4] \\
        [--servers sync:5,gthread:2x4]
"""

import argparse
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, timedelta
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--users", type=int, default=50, help="signed-in browsing users")
parser.add_argument("--duration", type=int, default=300, help="measured seconds")
parser.add_argument("--workers", type=int, default=max(2 * (os.cpu_count() or 1) - 1, 1))
parser.add_argument("--threads", type=int, default=4, help=">1: gthread workers, 1: sync")
parser.add_argument("--api-users", type=int, default=4, help="runtimes posting batches")
parser.add_argument("--warmup", type=int, default=20, help="seconds after the last sign-in")
parser.add_argument("--organisations", type=int, default=50)
parser.add_argument("--sync-rows", type=int, default=60_000, help="Sync Info rows in total")
parser.add_argument("--keep", action="store_true", help="leave the database and gunicorn up")
parser.add_argument(
    "--mode",
    choices=("think", "capacity", "both"),
    default="think",
    help="think: --users with think time; capacity: zero think time, users raised by --steps",
)
parser.add_argument("--steps", default="1,2,4,8,12,16,24,32", help="capacity: users per step")
parser.add_argument("--step-seconds", type=int, default=15, help="capacity: measured per step")
parser.add_argument(
    "--profile",
    type=int,
    default=0,
    metavar="USERS",
    help="py-spy on the workers while USERS users (no think time) open one page at a time",
)
parser.add_argument(
    "--servers",
    default="",
    help="gunicorn settings to run in turn, e.g. 'sync:5,gthread:2x4' (default: --workers and "
    "--threads)",
)
args = parser.parse_args()

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "billing_bench_load"
PASSWORD = "load-bench-pass-2026"  # noqa: S105 - the scratch database's users only
THINK = (1.0, 3.0)
BATCH = 100
STEPS = 5  # of the browsing loop (bench/load_locustfile.py Browser.STEPS)
PAGES = ("subscription", "invoice_history", "invoice_pdf", "sync_info", "sync_info_filtered")
TARGET_RATIO = 3.0  # each page's p95 against the signed-in floor's
TARGET_MS = 50.0
CAPACITY_P95_MS = 100.0  # a capacity step counts while its p95 stays within this, no error
STEP_WARMUP = 3
PROFILE_SECONDS = 10

# In-process seeding: emails nowhere, no job output in the figures.
os.environ["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"
os.environ.setdefault("LOG_LEVEL", "WARNING")

from scratch import scratch_database  # noqa: E402
from sync_records import sync_records  # noqa: E402

scratch_database(DATABASE, keep=args.keep)

from billing_portal.celery import app  # noqa: E402

# Nothing here should queue a task; if something does, it runs here rather than on the shared
# broker, where a worker of another database could take it.
app.conf.task_always_eager = True

from allauth.account.models import EmailAddress  # noqa: E402
from dateutil.relativedelta import relativedelta  # noqa: E402
from django.contrib.auth.hashers import make_password  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from accounts.audit import SYSTEM  # noqa: E402
from accounts.models import Membership, User  # noqa: E402
from accounts.services import organisation_create  # noqa: E402
from billing.models import (  # noqa: E402
    BillingProfile,
    Invoice,
    InvoiceDocument,
    InvoiceLine,
    InvoiceSequence,
    Payment,
    PaymentMethod,
    TaxRate,
)
from billing.pdf import invoice_pdf_bytes  # noqa: E402
from billing.tax import tax_for  # noqa: E402
from subscriptions.models import Environment, Plan, ProcessFlow, Subscription  # noqa: E402
from subscriptions.periods import period_bounds  # noqa: E402
from usage.months import usage_month_of  # noqa: E402
from usage.partitions import partitions_ensure  # noqa: E402
from usage.services import api_key_create, sync_info_ingest  # noqa: E402

# country, VAT/GST number, time zone, currency: VAT 23%, reverse charge, no tax, UK VAT, GST.
PROFILES = [
    ("IE", "", "Europe/Dublin", "EUR"),
    ("DE", "DE136695976", "Europe/Berlin", "EUR"),
    ("US", "", "America/New_York", "USD"),
    ("GB", "GB980780684", "Europe/London", "GBP"),
    ("IN", "27AAPFU0939F1ZV", "Asia/Kolkata", "USD"),
    ("AU", "", "Australia/Sydney", "USD"),
]
PLANS = ["professional", "professional", "standard", "enterprise"]
FLOWS = [
    ("Production", "Orders to ERP"),
    ("Production", "Customers to CRM"),
    ("Production", "Invoices to accounting"),
    ("Test", "Orders to ERP (test)"),
]


# Seeding ---------------------------------------------------------------------------------------


def seed(*, count: int, sync_rows: int, now, rng: random.Random) -> dict:
    """The organisations, their people, billing history, flows, keys and Sync Info."""
    partitions_ensure(now=now)
    password = make_password(PASSWORD)  # hashed once: 1,000,000 PBKDF2 rounds each otherwise
    plans = {plan.code: plan for plan in Plan.objects.prefetch_related("prices")}
    rates = {rate.country.code: (rate.name, rate.rate_bp) for rate in TaxRate.objects.all()}
    organisations, subscriptions, profiles = [], [], []
    people = []
    for i in range(count):
        country, tax_number, zone_name, currency = PROFILES[i % len(PROFILES)]
        months = 12 + i % 13
        admin = User.objects.create(
            email=f"admin@org-{i:02d}.load.test", full_name=f"Admin {i}", password=password
        )
        organisation = organisation_create(
            name=f"Load Org {i:02d}",
            owner=admin,
            time_zone=zone_name,
            currency=currency,
            now=now - relativedelta(months=months, days=2),
        )
        for role in (Membership.Role.BILLING, Membership.Role.MEMBER):
            user = User.objects.create(
                email=f"{role}@org-{i:02d}.load.test", full_name=f"{role} {i}", password=password
            )
            Membership.objects.create(organisation=organisation, user=user, role=role)
            people.append(user)
        people.append(admin)
        zone = organisation.tzinfo
        anchor = (now - relativedelta(months=months, days=1 + i % 27)).astimezone(zone)
        plan = plans[PLANS[i % len(PLANS)]]
        price = plan.price_for(currency).monthly_amount
        start, end = period_bounds(anchor=anchor, cycle="monthly", index=months, zone=zone)
        assert start <= now < end, (start, now, end)
        subscriptions.append(
            Subscription(
                organisation=organisation,
                plan=plan,
                billing_cycle="monthly",
                status="active",
                currency=currency,
                anchor_at=anchor,
                period_index=months,
                current_period_start=start,
                current_period_end=end,
                current_price=price,
                created_at=anchor,
                activated_at=anchor,
                status_changed_at=anchor,
            )
        )
        profiles.append(
            BillingProfile(
                organisation=organisation,
                company_name=f"Load Org {i:02d} Ltd",
                address_line1=f"{i + 1} Market Street",
                city="Springfield",
                postal_code=f"{10000 + i}",
                country=country,
                vat_number=tax_number,
                stripe_customer_id=f"cus_load{i:04d}",
            )
        )
        organisations.append(organisation)
    EmailAddress.objects.bulk_create(
        [EmailAddress(user=user, email=user.email, verified=True, primary=True) for user in people]
    )
    BillingProfile.objects.bulk_create(profiles)
    Subscription.objects.bulk_create(subscriptions)
    PaymentMethod.objects.bulk_create(
        [
            PaymentMethod(
                organisation=organisation,
                stripe_payment_method_id=f"pm_load{i:04d}",
                brand=("visa", "mastercard", "amex")[i % 3],
                last4=f"{4242 + i:04d}"[-4:],
                exp_month=1 + i % 12,
                exp_year=now.year + 2,
                expires_at=now + timedelta(days=700),
                created_at=subscription.anchor_at,
            )
            for i, (organisation, subscription) in enumerate(
                zip(organisations, subscriptions, strict=True)
            )
        ]
    )
    invoices = _invoice_history(subscriptions, profiles, rates=rates, now=now)
    pdf_seconds, pdf_sizes = _documents(invoices, count=len(PROFILES))
    flows, keys = _flows_and_keys(organisations, now=now)
    sync_seconds = _sync_info(subscriptions, flows, keys, total=sync_rows, now=now, rng=rng)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    by_org: dict[int, list[Invoice]] = {}
    for invoice in invoices:
        by_org.setdefault(invoice.organisation_id, []).append(invoice)
    return {
        "accounts": [
            {
                "email": f"admin@org-{i:02d}.load.test",
                "password": PASSWORD,
                "org": organisation.slug,
                # Newest first, as Invoice History lists them; the first page only.
                "invoices": [
                    invoice.number
                    for invoice in sorted(
                        by_org[organisation.pk], key=lambda inv: inv.issued_at, reverse=True
                    )[:20]
                ],
                "flows": [str(flow.public_id) for flow in flows[organisation.pk]],
            }
            for i, organisation in enumerate(organisations)
        ],
        # The runtimes post to organisations not on Standard, whose 50,000 a month a long run
        # could take past the 80% alert.
        "api": [
            {
                "key": keys[organisation.pk],
                "flows": [
                    str(flow.public_id)
                    for flow in flows[organisation.pk]
                    if flow.environment.name == "Production"
                ],
            }
            for organisation, subscription in zip(organisations, subscriptions, strict=True)
            if subscription.plan.code != "standard"
        ],
        "invoices": len(invoices),
        "pdf_seconds": pdf_seconds,
        "pdf_sizes": pdf_sizes,
        "sync_seconds": sync_seconds,
    }


def _invoice_history(subscriptions, profiles, *, rates, now) -> list[Invoice]:
    """Every period's invoice since the anchor, paid by card, numbered per year in issue
    order as the billing run numbers them."""
    drafts = []
    for subscription, profile in zip(subscriptions, profiles, strict=True):
        organisation = subscription.organisation
        profile.organisation = organisation
        details = profile.snapshot()
        decision = tax_for(details=details, rates=rates)
        plan = subscription.plan
        for index in range(subscription.period_index + 1):
            start, end = period_bounds(
                anchor=subscription.anchor_at,
                cycle="monthly",
                index=index,
                zone=organisation.tzinfo,
            )
            subtotal = subscription.current_price
            tax = decision.amount(subtotal)
            paid_at = start + timedelta(minutes=2)
            drafts.append(
                Invoice(
                    organisation=organisation,
                    subscription=subscription,
                    kind=Invoice.Kind.SUBSCRIPTION,
                    status=Invoice.Status.PAID,
                    currency=subscription.currency,
                    subtotal=subtotal,
                    tax_amount=tax,
                    total=subtotal + tax,
                    amount_paid=subtotal + tax,
                    tax_rule=decision.rule,
                    tax_rate_bp=decision.rate_bp,
                    tax_name=decision.name,
                    tax_note=decision.note,
                    plan_name=plan.name,
                    billing_cycle="monthly",
                    period_start=start,
                    period_end=end,
                    billing_details=details,
                    starts_term=index == 0,
                    payment_method_kind="card",
                    issued_at=start,
                    due_at=start,
                    paid_at=paid_at,
                    closed_at=paid_at,
                )
            )
    drafts.sort(key=lambda invoice: invoice.issued_at)
    last: dict[int, int] = {}
    for invoice in drafts:
        year = invoice.issued_at.astimezone(UTC).year
        last[year] = last.get(year, 0) + 1
        invoice.number = f"INV-{year}-{last[year]:06d}"
    InvoiceSequence.objects.bulk_create(
        [InvoiceSequence(year=year, last_number=number) for year, number in last.items()]
    )
    invoices = Invoice.objects.bulk_create(drafts, batch_size=1000)
    InvoiceLine.objects.bulk_create(
        [
            InvoiceLine(
                invoice=invoice,
                position=1,
                kind=InvoiceLine.Kind.PLAN,
                description=f"{invoice.plan_name} plan, monthly subscription",
                unit_amount=invoice.subtotal,
                amount=invoice.subtotal,
                period_start=invoice.period_start,
                period_end=invoice.period_end,
            )
            for invoice in invoices
        ],
        batch_size=1000,
    )
    methods = dict(
        PaymentMethod.objects.filter(status="active").values_list("organisation_id", "pk")
    )
    Payment.objects.bulk_create(
        [
            Payment(
                organisation_id=invoice.organisation_id,
                invoice=invoice,
                method_kind="card",
                payment_method_id=methods[invoice.organisation_id],
                attempt=1,
                amount=invoice.total,
                currency=invoice.currency,
                status=Payment.Status.SUCCEEDED,
                idempotency_key=f"invoice-{invoice.public_id}-attempt-1",
                processor_id=f"pi_load{invoice.pk:07d}",
                created_at=invoice.issued_at,
                completed_at=invoice.paid_at,
            )
            for invoice in invoices
        ],
        batch_size=1000,
    )
    return invoices


def _documents(invoices: list[Invoice], *, count: int) -> tuple[float, list[int]]:
    """One real PDF per country profile (organisation index modulo `count`), stored for every
    invoice of that profile (see the module docstring)."""
    organisations = sorted({invoice.organisation_id for invoice in invoices})
    profile_of = {org_id: n % count for n, org_id in enumerate(organisations)}
    rendered: dict[int, bytes] = {}
    started = time.perf_counter()
    for invoice in sorted(invoices, key=lambda inv: inv.issued_at, reverse=True):
        profile = profile_of[invoice.organisation_id]
        if profile not in rendered:
            rendered[profile] = invoice_pdf_bytes(invoice=invoice)
    elapsed = time.perf_counter() - started
    InvoiceDocument.objects.bulk_create(
        [
            InvoiceDocument(
                invoice=invoice,
                kind=InvoiceDocument.Kind.ORIGINAL,
                pdf=rendered[profile_of[invoice.organisation_id]],
                created_at=invoice.issued_at + timedelta(minutes=1),
            )
            for invoice in invoices
        ],
        batch_size=200,
    )
    return elapsed, sorted(len(pdf) for pdf in rendered.values())


def _flows_and_keys(organisations, *, now) -> tuple[dict[int, list], dict[int, str]]:
    flows: dict[int, list] = {}
    keys: dict[int, str] = {}
    for organisation in organisations:
        environments = {
            name: Environment.objects.create(organisation=organisation, name=name, created_at=now)
            for name in ("Production", "Test")
        }
        flows[organisation.pk] = [
            ProcessFlow.objects.create(
                organisation=organisation, environment=environments[env], name=name
            )
            for env, name in FLOWS
        ]
        _, keys[organisation.pk] = api_key_create(
            environment=environments["Production"], actor=SYSTEM, name="runtime-01", now=now
        )
    return flows, keys


def _sync_info(subscriptions, flows, keys, *, total: int, now, rng: random.Random) -> float:
    """`total` records over the current usage months, through the ingest service (COPY), in
    batches of 1,000: a few busy organisations hold most of them, every one has a few pages."""
    from usage.services import api_key_authenticate

    weights = [1.0 / (1 + n % 10) for n in range(len(subscriptions))]
    scale = total / sum(weights)
    started = time.perf_counter()
    for n, subscription in enumerate(subscriptions):
        organisation = subscription.organisation
        key = api_key_authenticate(plain=keys[organisation.pk], now=now)
        production = [
            str(flow.public_id)
            for flow in flows[organisation.pk]
            if flow.environment.name == "Production"
        ]
        month_start, _ = usage_month_of(subscription, now)
        span = (now - month_start).total_seconds()
        rows = max(300, round(weights[n] * scale))
        for batch, first in enumerate(range(0, rows, 1000)):
            count = min(1000, rows - first)
            records = sync_records(rng, production, count=count, now=now, span_seconds=span)
            result = sync_info_ingest(
                key=key,
                idempotency_key=f"seed-{batch}",
                body=json.dumps({"records": records}).encode(),
                now=now,
            )
            assert result.status_code == 201, result.body
    return time.perf_counter() - started


def page_queries(account: dict) -> list[tuple[str, int, float, int]]:
    """Each page in-process (Django test client, signed in): queries, median ms of 5, bytes."""
    client = Client()
    client.force_login(User.objects.get(email=account["email"]))
    base = f"/o/{account['org']}"
    pages = [
        ("subscription", f"{base}/settings/subscription/"),
        ("invoice_history", f"{base}/settings/billing/invoices/"),
        ("invoice_pdf", f"{base}/settings/billing/invoices/{account['invoices'][3]}/pdf/"),
        ("sync_info", f"{base}/sync-info/"),
        ("sync_info_filtered", f"{base}/sync-info/?status=failed"),
    ]
    found = []
    for name, url in pages:
        client.get(url)
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            client.get(url)
            timings.append((time.perf_counter() - started) * 1000)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200, (name, response.status_code)
        found.append((name, len(queries), statistics.median(timings), len(response.content)))
    return found


# Serving ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(work: Path) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.load_settings",
        "DEBUG": "0",
        "SECRET_KEY": "bench-load-" + secrets.token_urlsafe(32),
        "ALLOWED_HOSTS": "127.0.0.1",
        # One TLS proxy in front (the client sends X-Forwarded-Proto and X-Forwarded-For as
        # it would); the SSL redirect and secure cookies stay on.
        "TRUSTED_PROXY_COUNT": "1",
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        "CELERY_TASK_ALWAYS_EAGER": "1",
        # The production default: one access line per request (core.observability),
        # into the run's log file.
        "LOG_LEVEL": "INFO",
        "LOAD_STATIC_ROOT": str(work / "static"),
        "LOAD_CACHE_PREFIX": f"bench-load-{os.getpid()}",
    }


def start_gunicorn(env: dict, *, port: int, workers: int, threads: int, log: Path):
    subprocess.run(  # noqa: S603 - our own manage.py, fixed arguments
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    command = [
        str(ROOT / ".venv" / "bin" / "gunicorn"),
        "billing_portal.wsgi",
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "--error-logfile",
        str(log),
    ]
    if threads > 1:
        command += ["--worker-class", "gthread", "--threads", str(threads)]
    with log.open("a") as out:  # the workers' log lines (Django's too) go there
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)  # noqa: S603
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/bench/floor/", headers={"X-Forwarded-Proto": "https"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return server
        except OSError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited at start-up; see {log}")
        time.sleep(0.3)
    server.terminate()
    raise SystemExit("gunicorn did not answer within 60 s")


class CpuWatch:
    """Every 2 s: the machine's busy CPU time, and the gunicorn processes' and locust's."""

    def __init__(self, server_pid: int):
        import psutil

        self.psutil = psutil
        self.server = psutil.Process(server_pid)
        self.locust = None
        self.points: list[tuple[float, float, float, float, float]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _cpu(self, processes) -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except self.psutil.Error:
                pass
        return total

    def _run(self):
        while not self.stopped.wait(2.0):
            machine = self.psutil.cpu_times()
            idle = machine.idle + getattr(machine, "iowait", 0.0)
            try:
                workers = [self.server, *self.server.children()]
            except self.psutil.Error:
                workers = []
            locust = [self.locust] if self.locust else []
            self.points.append(
                (
                    time.time(),
                    sum(machine) - idle,
                    sum(machine),
                    self._cpu(workers),
                    self._cpu(locust),
                )
            )

    def between(self, start: float, end: float) -> dict | None:
        inside = [point for point in self.points if start <= point[0] <= end]
        if len(inside) < 2:
            return None
        first, last = inside[0], inside[-1]
        wall = last[0] - first[0]
        return {
            "busy": (last[1] - first[1]) / (last[2] - first[2]),
            "gunicorn": (last[3] - first[3]) / wall,
            "locust": (last[4] - first[4]) / wall,
        }


def run_locust(
    plan_path: Path,
    *,
    port: int,
    total_users: int,
    limit: int,
    log: Path,
    watch,
    classes=(),
    on_marker=None,
):
    command = [
        str(ROOT / ".venv" / "bin" / "locust"),
        "-f",
        str(ROOT / "bench" / "load_locustfile.py"),
        "--headless",
        "--host",
        f"http://127.0.0.1:{port}",
        "--users",
        str(total_users),
        "--spawn-rate",
        "5",
        "--run-time",
        f"{limit}s",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",
        *classes,
    ]
    with log.open("w") as out:
        process = subprocess.Popen(  # noqa: S603 - our own locust, fixed arguments
            command,
            cwd=ROOT,
            env={**os.environ, "LOAD_PLAN": str(plan_path)},
            stdout=out,
            stderr=out,
        )
        watch.locust = watch.psutil.Process(process.pid)
        if on_marker is not None:
            on_marker(process)
        return process.wait()


# Report ----------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest rank on sorted values."""
    return values[max(0, math.ceil(q * len(values)) - 1)]


def report(result: dict, *, workers: int, cpu: dict | None) -> bool:
    measured: dict[str, list[float]] = {}
    everything: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    for name, ms, ok, phase in result["samples"]:
        everything.setdefault(name, []).append(ms)
        if not ok:
            errors[name] = errors.get(name, 0) + 1
        if phase == "measure":
            measured.setdefault(name, []).append(ms)
    window = result["ended"] - result["started"]
    floor = sorted(measured.get("signed_in_floor", [0.0]))
    floor_p95 = percentile(floor, 0.95)
    passed = True
    header = (
        f"  {'request':<19} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8} {'p95/sfloor':>9}  verdict"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for name in (*PAGES, "api_batch", "signed_in_floor", "floor"):
        values = sorted(measured.get(name, []))
        failed = errors.get(name, 0)
        if not values:
            print(f"  {name:<19} {'no request measured':>34}  FAIL")
            passed = False
            continue
        p50, p95, p99 = (percentile(values, q) for q in (0.50, 0.95, 0.99))
        ratio = p95 / floor_p95 if floor_p95 else float("inf")
        if name in PAGES:
            ok = failed == 0 and ratio <= TARGET_RATIO and p95 <= TARGET_MS
        else:
            ok = failed == 0
        passed &= ok
        print(
            f"  {name:<19} {len(values):>8,} {failed:>6} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} "
            f"{values[-1]:>8.1f} {ratio:>8.2f}x  "
            f"{'PASS' if ok else 'FAIL'}"
        )
    for name in ("sign_in_form", "sign_in"):
        values = sorted(everything.get(name, []))
        failed = errors.get(name, 0)
        passed &= failed == 0
        if values:
            print(
                f"  {name:<19} {len(values):>8,} {failed:>6} {percentile(values, 0.5):>8.1f} "
                f"{percentile(values, 0.95):>8.1f} {percentile(values, 0.99):>8.1f} "
                f"{values[-1]:>8.1f} {'':>9}  {'PASS' if failed == 0 else 'FAIL'} "
                "(before the measurement)"
            )
    other = {
        name: n
        for name, n in errors.items()
        if name not in (*PAGES, "api_batch", "signed_in_floor", "floor", "sign_in_form", "sign_in")
    }
    passed &= not other and result["sign_in_failed"] == 0
    total = sum(len(values) for values in measured.values())
    pages = sum(len(measured.get(name, [])) for name in PAGES)
    print(
        f"  {total:,} requests measured in {window:.0f} s = {total / window:.1f} requests/s "
        f"({pages / window:.1f} page views/s, "
        f"{len(measured.get('api_batch', [])) * BATCH / window:,.0f} API records/s); "
        f"signed in {result['signed_in']}, refused {result['sign_in_failed']}; "
        f"gunicorn: {workers} workers"
    )
    if cpu:
        print(
            f"  CPU over the window: machine {100 * cpu['busy']:.0f}% busy of "
            f"{os.cpu_count()} cores; gunicorn {100 * cpu['gunicorn']:.0f}% of one core, "
            f"locust {100 * cpu['locust']:.0f}%; load average now "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
    for name, phase, message in result["errors"]:
        print(f"  error: {name} ({phase}): {message}")
    if other:
        print(f"  errors of other requests: {other}")
    print(
        f"  targets: no error; each page's p95 <= {TARGET_RATIO:.0f}x the signed-in floor's p95 "
        f"({TARGET_RATIO * floor_p95:.1f} ms) and <= {TARGET_MS:.0f} ms -> "
        f"{'PASS' if passed else 'FAIL'}"
    )
    return passed


def capacity_report(result: dict, *, name: str, cpu_of) -> float:
    """Per step: views/s, p50/p95/p99, errors, CPU; returns the capacity (0 when no step
    qualifies)."""
    print(
        f"  {'users':>5} {'views/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'machine':>7} {'gunicorn':>8} {'locust':>6}"
    )
    capacity = 0.0
    failed_sign_in = result["sign_in_failed"]
    for users, started, ended in result["windows"]:
        phase = f"step:{users}"
        values = sorted(ms for n, ms, ok, p in result["samples"] if p == phase and n == name)
        errors = sum(1 for n, ms, ok, p in result["samples"] if p == phase and not ok)
        rate = len(values) / (ended - started)
        if not values:
            print(f"  {users:>5} no request measured")
            continue
        p50, p95, p99 = (percentile(values, q) for q in (0.50, 0.95, 0.99))
        cpu = cpu_of(started, ended)
        use = (
            f"{100 * cpu['busy']:>6.0f}% {100 * cpu['gunicorn']:>7.0f}% "
            f"{100 * cpu['locust']:>5.0f}%"
            if cpu
            else ""
        )
        qualifies = p95 <= CAPACITY_P95_MS and errors == 0 and failed_sign_in == 0
        if qualifies:
            capacity = max(capacity, rate)
        print(
            f"  {users:>5} {rate:>8.1f} {p50:>7.1f} {p95:>7.1f} {p99:>7.1f} {errors:>6} {use}"
            f"{'' if qualifies else '  (over)'}"
        )
    for request, phase, message in result["errors"]:
        print(f"  error: {request} ({phase}): {message}")
    print(
        f"  CAPACITY {name}: {capacity:.1f} views/s (the most with p95 <= "
        f"{CAPACITY_P95_MS:.0f} ms and no error; machine/gunicorn/locust: CPU in % of one core, "
        "machine in % of all)"
    )
    return capacity


def run_capacity(ctx: dict, *, kind: str, steps: list[int], only=(), marker: Path | None = None):
    """One locust run, zero think time, users raised step by step (bench/load_locustfile.py)."""
    work = ctx["work"]
    samples = work / f"samples-{kind}.json"
    plan = {
        **ctx["plan"],
        "mode": "capacity",
        "think": (0.0, 0.0),
        "steps": steps,
        "step_seconds": args.step_seconds if not only else PROFILE_SECONDS + 2,
        "step_warmup": STEP_WARMUP,
        "samples": str(samples),
        "only": list(only),
        "marker": str(marker) if marker else "",
    }
    plan_path = work / f"plan-{kind}.json"
    plan_path.write_text(json.dumps(plan))
    watch = CpuWatch(ctx["server"].pid)
    watch.thread.start()
    try:
        run_locust(
            plan_path,
            port=ctx["port"],
            total_users=1,
            limit=len(steps) * (plan["step_seconds"] + STEP_WARMUP + 60) + 60,
            log=work / f"locust-{kind}.log",
            watch=watch,
            classes=("SignedInFloor" if kind == "signed_in_floor" else "Browser",),
            on_marker=ctx.get("on_marker") if marker else None,
        )
    finally:
        watch.stopped.set()
    if not samples.exists():
        print("  locust ended without a measurement:")
        print((work / f"locust-{kind}.log").read_text()[-3000:])
        return None, watch
    return json.loads(samples.read_text()), watch


def profile_pages(ctx: dict, users: int) -> None:
    """py-spy on every gunicorn worker while `users` users open one page, no think time: the
    functions the workers spend their time in (own time, and with what they call)."""
    spy = ROOT / ".venv" / "bin" / "py-spy"
    for page in (*PAGES, "signed_in_floor"):
        marker = ctx["work"] / f"marker-{page}"
        out = ctx["work"] / f"profile-{page}.txt"
        spies = []

        def on_marker(process, marker=marker, out=out, spies=spies):
            deadline = time.monotonic() + 180
            while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if marker.exists():
                spies.append(
                    subprocess.Popen(  # noqa: S603 - our own py-spy, fixed arguments
                        [
                            str(spy),
                            "record",
                            "--pid",
                            str(ctx["server"].pid),
                            "--subprocesses",
                            "--nonblocking",
                            "--rate",
                            "200",
                            "--duration",
                            str(PROFILE_SECONDS),
                            "--format",
                            "raw",
                            "--output",
                            str(out),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )

        ctx["on_marker"] = on_marker
        kind = "signed_in_floor" if page == "signed_in_floor" else page
        result, _watch = run_capacity(
            ctx,
            kind=kind,
            steps=[users],
            only=() if page == "signed_in_floor" else (page,),
            marker=marker,
        )
        for process in spies:
            process.wait(timeout=60)
        if not out.exists():
            print(f"  profile {page}: py-spy wrote nothing")
            continue
        views = 0
        if result:
            views = sum(
                1 for n, _ms, _ok, p in result["samples"] if n == page and p.startswith("step")
            )
        print_profile(page, out, views=views)


def print_profile(page: str, path: Path, *, views: int) -> None:
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    areas: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [
            re.sub(r":\d+\)$", ")", frame)
            for frame in stack.split(";")
            if not frame.startswith(("process ", "thread "))
        ]
        if not frames or "(idle)" in stack:
            continue
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            if OURS.search(frame):
                inclusive[frame] = inclusive.get(frame, 0) + n
        areas[_area(frames)] = areas.get(_area(frames), 0) + n
    print(
        f"  profile {page}: {total:,} samples at 200 Hz of workers not idle (waiting on Postgres "
        f"counts), {views} views = {1000 * total / 200 / max(views, 1):.1f} worker-ms a view"
    )
    print(
        "    in: "
        + ", ".join(f"{area} {100 * areas.get(area, 0) / max(total, 1):.0f}%" for area in AREAS)
    )
    for title, table in (("own time", own), ("ours, with what they call", inclusive)):
        print(f"    {title}:")
        for frame, n in sorted(table.items(), key=lambda item: -item[1])[:10]:
            short = frame.replace(str(ROOT) + "/", "")
            short = re.sub(r"/\S*/site-packages/", "", short)
            print(f"      {100 * n / max(total, 1):5.1f}%  {short[:110]}")


# py-spy names a module of the checkout by its path from the checkout, a library's by its
# path from site-packages.
OURS = re.compile(
    r"\((?:accounts|billing|billing_portal|core|portal|retention|sso|subscriptions|support|"
    r"usage)/\S+\.py\)$"
)
AREAS = ("Postgres (psycopg)", "ORM (Python)", "templates", "gunicorn", "other Python")


def _area(frames: list[str]) -> str:
    """One area per sample, by the innermost frame first: psycopg is the query on the wire
    (sending, waiting for Postgres, reading); then whatever template or ORM code runs it."""
    if "psycopg/" in frames[-1]:
        return AREAS[0]
    if any("django/template/" in frame for frame in frames):
        return AREAS[2]
    if any("django/db/" in frame for frame in frames):
        return AREAS[1]
    if "gunicorn/" in frames[-1]:
        return AREAS[3]
    return AREAS[4]


def parse_servers() -> list[tuple[str, int, int]]:
    if not args.servers:
        return [("gthread" if args.threads > 1 else "sync", args.workers, args.threads)]
    found = []
    for item in args.servers.split(","):
        kind, _, size = item.partition(":")
        workers, _, threads = size.partition("x")
        found.append((kind, int(workers), int(threads or 1)))
    return found


def main() -> int:
    now = timezone.now()
    rng = random.Random(11)
    print(
        f"Load benchmark, {DATABASE}, {os.cpu_count()} cores, mode {args.mode}: think mode "
        f"{args.users} signed-in users, {args.api_users} API runtimes ({BATCH} records a batch), "
        f"{math.ceil(args.users / STEPS)} anonymous and as many signed-in floor users, think "
        f"{THINK[0]:.0f}-{THINK[1]:.0f} s, {args.duration} s measured after a {args.warmup} s "
        f"warm-up; capacity steps {args.steps} users, {args.step_seconds} s each"
    )
    started = time.perf_counter()
    seeded = seed(count=args.organisations, sync_rows=args.sync_rows, now=now, rng=rng)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_syncinfo")
        (stored,) = cursor.fetchone()
    print(
        f"  seeded in {time.perf_counter() - started:.0f} s: {args.organisations} organisations, "
        f"{seeded['invoices']:,} paid invoices with their PDFs ({len(seeded['pdf_sizes'])} "
        f"rendered in {seeded['pdf_seconds']:.1f} s, "
        f"{min(seeded['pdf_sizes']) / 1024:.0f}-{max(seeded['pdf_sizes']) / 1024:.0f} KiB), "
        f"{stored:,} Sync Info rows (ingested in {seeded['sync_seconds']:.1f} s)"
    )
    for name, queries, ms, size in page_queries(seeded["accounts"][0]):
        print(
            f"    {name:<19} {queries:>3} queries, {ms:6.1f} ms in-process, {size / 1024:6.1f} KiB"
        )
    connection.close()

    passed = True
    for kind, workers, threads in parse_servers():
        print(f"gunicorn {kind}: {workers} workers x {threads} threads")
        passed &= serve_and_measure(seeded, workers=workers, threads=threads)
    return 0 if passed else 1


def serve_and_measure(seeded: dict, *, workers: int, threads: int) -> bool:
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    env = server_env(work)
    port = free_port()
    log = work / "gunicorn.log"
    server = start_gunicorn(env, port=port, workers=workers, threads=threads, log=log)
    floor_users = math.ceil(args.users / STEPS)
    api_users = min(args.api_users, len(seeded["api"]))
    plan = {
        "mode": "think",
        "host": f"http://127.0.0.1:{port}",
        "users": args.users,
        "api_users": api_users,
        "floor_users": floor_users,
        "signed_floor_users": floor_users,
        "think": THINK,
        "batch": BATCH,
        "warmup": args.warmup,
        "duration": args.duration,
        "sign_in_timeout": 120,
        "samples": str(work / "samples.json"),
        "accounts": seeded["accounts"],
        "api": seeded["api"],
    }
    ctx = {"work": work, "plan": plan, "server": server, "port": port}
    passed = True
    try:
        if args.mode in ("think", "both"):
            passed &= think_mode(ctx, floor_users=floor_users, api_users=api_users, log=log)
        if args.mode in ("capacity", "both"):
            steps = [int(n) for n in args.steps.split(",")]
            for kind in ("pages", "signed_in_floor"):
                result, watch = run_capacity(ctx, kind=kind, steps=steps)
                if result is None:
                    passed = False
                    continue
                print(f"  capacity, {kind}, no think time:")
                name = "signed_in_floor" if kind == "signed_in_floor" else None
                if name is None:
                    # Every page of the loop counts as a page view.
                    for sample in result["samples"]:
                        if sample[0] in PAGES:
                            sample[0] = "page"
                    name = "page"
                capacity = capacity_report(result, name=name, cpu_of=watch.between)
                passed &= capacity > 0
        if args.profile:
            profile_pages(ctx, args.profile)
        problems = [
            line
            for line in log.read_text().splitlines()
            if any(
                mark in line
                for mark in (" ERROR ", '"level": "ERROR"', "[ERROR]", "[CRITICAL]", "Traceback")
            )
        ]
        if problems:
            passed = False
            print(f"  gunicorn logged {len(problems)} errors, e.g. {problems[0][:300]}")
    finally:
        if args.keep:
            print(
                f"  kept: gunicorn pid {server.pid} on http://127.0.0.1:{port}, database "
                f"{DATABASE}, files in {work}.\n  stop: kill {server.pid}; "
                f"psql {os.environ['DATABASE_URL'].rsplit('/', 1)[0]}/postgres "
                f"-c 'DROP DATABASE {DATABASE} WITH (FORCE)'"
            )
        else:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            shutil.rmtree(work, ignore_errors=True)
    return passed


def think_mode(ctx: dict, *, floor_users: int, api_users: int, log: Path) -> bool:
    plan = ctx["plan"]
    plan_path = ctx["work"] / "plan.json"
    plan_path.write_text(json.dumps(plan))
    watch = CpuWatch(ctx["server"].pid)
    watch.thread.start()
    try:
        code = run_locust(
            plan_path,
            port=ctx["port"],
            total_users=args.users + api_users + 2 * floor_users,
            limit=plan["sign_in_timeout"] + args.warmup + args.duration + 60,
            log=ctx["work"] / "locust.log",
            watch=watch,
        )
    finally:
        watch.stopped.set()
    samples = Path(plan["samples"])
    if not samples.exists():
        print(f"  locust ended (exit {code}) without a measurement:")
        print((ctx["work"] / "locust.log").read_text()[-3000:])
        return False
    result = json.loads(samples.read_text())
    workers = len(psutil_children(ctx["server"].pid))
    print(f"  think mode, {args.users} users:")
    return report(result, workers=workers, cpu=watch.between(result["started"], result["ended"]))


def psutil_children(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children()


if __name__ == "__main__":
    sys.exit(main())
