"""A simulated year of customers, shared by tests/billing/test_simulated_year.py and
bench/simulate_year.py.

N organisations live through D days of the real scheduled jobs (`core.jobs`, what
`manage.py tick` runs) while a seeded random walk decides what their people and ops staff do,
every step through the services the product's views and admin actions call, with an explicit
`now` and time-machine at that instant for anything that reads the clock. Nothing here writes a
billing row itself.

Time. Each simulated day (UTC) ends with a tick at 23:45, every job as of that instant (with
tick_every_day=False only when a money job has work that day, and at least weekly). People act
at random times of the day. Before someone acts after their subscription's period ended, the
tick of the quarter hour after that end runs first, as the 15-minute schedule would have run
it; and now and then someone acts in exactly those minutes, after the period end and before the
billing run.

Usage. While an organisation's subscription serves, its runtime syncs records at a rate of its
plan's monthly limit times a factor drawn every 30 days (below or above the limit), and posts
them in batches through the ingest service behind POST /api/v1/sync-info with the environment's
API key. Batches go out now and then, and always before a tick that may close the usage month
they belong to (a runtime posts within minutes; a record arriving after its month was billed is
a different story, not simulated). The catalogue's monthly limits are lowered first, as ops
would in Django admin > Plans, so a few hundred records cross a limit instead of 50,000.

The moves themselves are in devkit/simulation_moves.py.

PDFs: rendering is replaced by a constant document (WeasyPrint costs ~150 ms an invoice and has
no bearing on money); the job that renders them and the "invoice issued" email still run.
"""

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from unittest import mock

from django.db.models import Count, Exists, OuterRef, Q, Sum

from accounts.audit import Actor
from accounts.models import Organisation, User
from billing.dunning import ORDER as DUNNING_ORDER
from billing.dunning import step_due_at
from billing.invoicing import overage_months_due
from billing.models import (
    BalanceEntry,
    CreditNote,
    Dispute,
    DunningCase,
    Invoice,
    OverageCharge,
    Payment,
    Refund,
)
from billing.payments import PENDING_RETRY_AFTER, payment_record_manual
from core.errors import ServiceError
from core.jobs import all_jobs, run_job
from devkit.simulation_moves import (
    BILLING_DETAILS,
    SIM_LIMITS,
    Customer,
    CustomerMoves,
    at_instant,
)
from subscriptions.cancellation import (
    DATA_KEPT_AFTER_END,
)
from subscriptions.models import (
    BillingCycle,
    PaymentMethodKind,
    Plan,
    PlanChange,
    ProcessFlow,
    Subscription,
)
from subscriptions.states import RENEWING, SERVING
from usage.months import usage_month_of
from usage.services import api_key_authenticate, sync_info_ingest

START = datetime(2027, 1, 4, tzinfo=UTC)  # a Monday, ahead of the real clock
DAY_TICK = timedelta(hours=23, minutes=45)
QUARTER = timedelta(minutes=15)
# Skipping the ticks of days with no billing work due (tick_every_day=False), the daily
# housekeeping jobs (retention, partitions, SSO, reconciliation) still run this often.
HOUSEKEEPING_AT_LEAST_EVERY = timedelta(days=7)
# A valid PDF with one empty page.
PDF_STUB = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]"
    b"/Count 1>>endobj\n3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Sydney"]
CURRENCY_WEIGHTS = {"USD": 5, "EUR": 3, "GBP": 2}
PLAN_WEIGHTS = {"standard": 5, "professional": 4, "enterprise": 2}

# Per organisation and day, the chance of each move in the state it is in (times `activity`).
ACTIVE_MOVES = {
    "upgrade": 0.006,
    "downgrade": 0.006,
    "cancel": 0.003,
    "card_goes_bad": 0.004,
    "card_that_asks": 0.003,  # a new card whose bank asks for 3-D Secure
    "billing_details": 0.002,
    "switch_to_annual": 0.003,  # ops, for the account manager
    "invoice_by_transfer": 0.01,  # ops; only for organisations that asked for it
    "invoice_by_card": 0.002,  # ops, back to card
    "credit_note": 0.004,  # ops correct a recent invoice (refund, balance, outside, due)
    "dispute": 0.0015,  # a cardholder disputes a card payment with their bank
    "dashboard_refund": 0.001,  # ops refund part of a charge in the Stripe dashboard
}
# While a dispute is open, the chance a day that the bank decides it.
DISPUTE_DECIDED = 0.05
SCHEDULED_DOWNGRADE_MOVES = {"undo_downgrade": 0.008}
CANCELLED_MOVES = {"undo_cancel": 0.015, "goodwill_credit": 0.005}
FAILING_MOVES = {  # past due, grace period, suspended
    "replace_card": 0.12,  # a slow payer: a sixth of these three
    "retry_payment": 0.05,
    "confirm_payment": 0.25,  # the email's link, when the bank waits for the customer
    "cancel": 0.006,
    "extend_grace": 0.05,  # ops; only in the grace period, once a case
    "write_off": 0.01,  # ops; only when suspended
    "credit_note": 0.01,  # ops lower what is owed (a complaint about the overdue invoice)
}
BAD_CARD_WHILE_ACTIVE = {"replace_card": 0.01}
# Per renewal: someone acts in the minutes between the period end and the next billing run.
BOUNDARY_MOVES = 0.05
# Per renewal: someone upgrades in the last half hour of the period, when the prorated amount
# is below the processor's minimum charge (carried to the renewal invoice).
LAST_MINUTE_UPGRADES = 0.1
INCOMPLETE_MOVES = {"checkout_again": 0.4}
ENDED_MOVES = {"resubscribe": 0.04, "goodwill_credit": 0.01}
PREFERS_TRANSFER = 0.4
SLOW_PAYERS = 0.4  # ignore the failed-payment emails for weeks: some get suspended
# Ops record a bank transfer / PO payment: (share, days after issue from, to); None: never.
TRANSFER_DELAYS = [(0.65, 1, 29), (0.27, 31, 50), (0.08, None, None)]
FAILED_SYNC_SHARE = 0.03  # Sync Info records with status "failed"


@dataclass
class Stats:
    days: int = 0
    ticks: int = 0
    moves: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    job_seconds: Counter = field(default_factory=Counter)
    records: int = 0
    batches: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        """What the database holds after the run: the figures the test and the bench report."""
        invoices = Invoice.objects.aggregate(
            total=Count("pk"),
            paid=Count("pk", filter=Q(status=Invoice.Status.PAID)),
            open=Count("pk", filter=Q(status=Invoice.Status.OPEN)),
            void=Count("pk", filter=Q(status=Invoice.Status.VOID)),
            uncollectible=Count("pk", filter=Q(status=Invoice.Status.UNCOLLECTIBLE)),
            upgrade_paid=Count(
                "pk", filter=Q(kind=Invoice.Kind.UPGRADE, status=Invoice.Status.PAID)
            ),
            overage_only=Count("pk", filter=Q(kind=Invoice.Kind.OVERAGE)),
            by_transfer=Count("pk", filter=~Q(payment_method_kind=PaymentMethodKind.CARD)),
        )
        payments = Payment.objects.aggregate(
            total=Count("pk"),
            succeeded=Count("pk", filter=Q(status=Payment.Status.SUCCEEDED)),
            failed=Count("pk", filter=Q(status=Payment.Status.FAILED)),
            manual=Count(
                "pk",
                filter=Q(status=Payment.Status.SUCCEEDED) & ~Q(method_kind=PaymentMethodKind.CARD),
            ),
        )
        asked = Payment.objects.filter(authentication_requested_at__isnull=False)
        authentication = Counter()
        for kind, starts_term, status in asked.values_list(
            "invoice__kind", "invoice__starts_term", "status"
        ):
            where = (
                "upgrade"
                if kind == Invoice.Kind.UPGRADE
                else "checkout"
                if starts_term
                else "off-session"
            )
            authentication[f"{where}: {status}"] += 1
        changes = PlanChange.objects.aggregate(
            upgrades=Count(
                "pk",
                filter=Q(kind=PlanChange.Kind.UPGRADE, status=PlanChange.Status.APPLIED),
            ),
            downgrades=Count(
                "pk",
                filter=Q(kind=PlanChange.Kind.DOWNGRADE, status=PlanChange.Status.APPLIED),
            ),
        )
        credit_notes = dict(
            CreditNote.objects.values_list("outcome").annotate(n=Count("pk")).order_by()
        )
        return {
            "organisations": Organisation.objects.count(),
            "subscriptions": dict(
                Subscription.objects.values_list("status").annotate(n=Count("pk")).order_by()
            ),
            "invoices": invoices,
            "payments": payments,
            "plan_changes": changes,
            # Payments the bank asked the customer to authenticate, by where and how they ended
            # (a checkout's attempt may be off-session later: the charge job never retries it).
            "needed_authentication": dict(sorted(authentication.items())),
            # Credit notes by outcome, the refunds to cards by status, the disputes by status,
            # and the customer balance: credited to it, applied to invoices, left.
            "credit_notes": dict(sorted(credit_notes.items())),
            "goodwill_credit_notes": CreditNote.objects.filter(
                reason=CreditNote.Reason.GOODWILL
            ).count(),
            "refunds": dict(
                Refund.objects.values_list("status").annotate(n=Count("pk")).order_by()
            ),
            "disputes": dict(
                Dispute.objects.values_list("status").annotate(n=Count("pk")).order_by()
            ),
            "balance": BalanceEntry.objects.aggregate(
                credited=Sum("amount", filter=Q(amount__gt=0)),
                applied=Sum("amount", filter=Q(kind=BalanceEntry.Kind.APPLIED)),
                left=Sum("remaining"),
            ),
            "dunning_cases": DunningCase.objects.count(),
            "suspended_cases": DunningCase.objects.filter(steps__step="day_14").count(),
            "overage_charges": OverageCharge.objects.count(),
            "records": self.records,
            "batches": self.batches,
            "ticks": self.ticks,
            "days": self.days,
            "moves": dict(sorted(self.moves.items())),
            "refused": dict(sorted(self.refused.items())),
        }


DayCheck = Callable[[datetime], list]


class Simulation(CustomerMoves):
    """`Simulation(organisations=8, days=366, seed=1).run(check=...)`; `check(now)` after each
    day's tick returns the day's problems (ledger violations), collected in `problems`."""

    def __init__(
        self,
        *,
        organisations: int,
        days: int,
        seed: int,
        start: datetime = START,
        activity: float = 1.0,
        signup_days: int | None = None,
        tick_every_day: bool = True,
        stop_on_problem: bool = True,
        record_errors: bool = False,
    ):
        self.days = days
        self.start = start
        self.activity = activity
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible walk, not a secret
        self.seed = seed
        self.stop_on_problem = stop_on_problem
        self.tick_every_day = tick_every_day
        # The bench keeps going after a job or a move raises (as `tick` does after a failing
        # job) and reports it; the test lets it propagate.
        self.record_errors = record_errors
        self.stats = Stats()
        self.problems: list[tuple[datetime, object]] = []
        self.last_tick: datetime | None = None
        self.jobs = [job.name for job in all_jobs()]
        self._subscriptions: dict[int, Subscription] = {}
        self._scheduled_downgrades: set[int] = set()
        self._transfer_due: dict[int, datetime | None] = {}  # invoice id -> when ops record it
        # Half sign up on the first day (so annual terms renew within a year), the rest later.
        window = signup_days if signup_days is not None else max(1, days * 2 // 3)
        rng = self.rng
        self.customers = [
            Customer(
                index=n,
                signup_day=0 if n % 2 == 0 else rng.randrange(window),
                zone=rng.choice(ZONES),
                currency=_weighted(rng, CURRENCY_WEIGHTS),
                plan=_weighted(rng, PLAN_WEIGHTS),
                cycle=BillingCycle.ANNUAL if rng.random() < 0.3 else BillingCycle.MONTHLY,
                details=rng.choice(BILLING_DETAILS),
                prefers_transfer=rng.random() < PREFERS_TRANSFER,
                slow_payer=rng.random() < SLOW_PAYERS,
            )
            for n in range(organisations)
        ]
        self.ops: User | None = None

    # The run -----------------------------------------------------------------------------

    def run(self, *, check: DayCheck | None = None) -> Stats:
        began = time.perf_counter()
        with ExitStack() as stack:
            stack.enter_context(mock.patch("billing.pdf.html_to_pdf", return_value=PDF_STUB))
            self._set_up()
            for day in range(self.days):
                self._day(day)
                end = self.start + timedelta(days=day) + DAY_TICK
                if (
                    self.tick_every_day
                    or self.last_tick is None
                    or end - self.last_tick >= HOUSEKEEPING_AT_LEAST_EVERY
                    or self._billing_due_by(end)
                ):
                    self._tick(end)
                self.stats.days += 1
                if check is not None:
                    with at_instant(end):
                        found = check(end)
                    self.problems.extend((end, problem) for problem in found)
                    if found and self.stop_on_problem:
                        break
        self.stats.seconds = time.perf_counter() - began
        return self.stats

    def _set_up(self) -> None:
        with at_instant(self.start):
            for code, limit in SIM_LIMITS.items():
                plan = Plan.objects.get(code=code)
                plan.monthly_transactions = limit
                plan.save(update_fields=["monthly_transactions", "updated_at"])
            self._ranks = list(Plan.objects.filter(is_public=True).values_list("rank", flat=True))
            self.ops = User.objects.create_user(
                email=f"ops-{self.seed}@sim.test", is_staff=True, full_name="Ops"
            )

    def _day(self, day: int) -> None:
        rng = self.rng
        midnight = self.start + timedelta(days=day)
        events: list[tuple[datetime, int, str, object]] = []  # (at, order, move, who)

        def at_random_time() -> datetime:
            return midnight + timedelta(seconds=rng.randrange(7 * 3600, 21 * 3600))

        for customer in self.customers:
            if customer.signup_day == day:
                events.append((at_random_time(), customer.index, "sign_up", customer))
                continue
            move = self._choose_move(customer)
            if move is not None:
                events.append((at_random_time(), customer.index, move, customer))
            subscription = self._subscriptions.get(customer.organisation_id)
            if (
                subscription is not None
                and subscription.status in RENEWING
                and midnight <= subscription.current_period_end < midnight + timedelta(days=1)
                and rng.random() < BOUNDARY_MOVES * self.activity
            ):
                # Someone acts after the period ended, before the quarter-hour billing run.
                end = subscription.current_period_end
                window = (_quarter_after(end) - end).total_seconds()
                move = self._choose_move(customer, surely=True)
                if window > 1 and move is not None:
                    at = end + timedelta(seconds=rng.uniform(0, window - 1))
                    events.append((at, customer.index, move, customer))
                    self.stats.moves["(before the billing run)"] += 1
            if (
                subscription is not None
                and subscription.status == Subscription.Status.ACTIVE
                and midnight <= subscription.current_period_end < midnight + timedelta(days=1)
                and "upgrade" in self._menu(customer)
                and rng.random() < LAST_MINUTE_UPGRADES * self.activity
            ):
                at = subscription.current_period_end - timedelta(seconds=rng.uniform(60, 1800))
                if at > midnight:
                    events.append((at, customer.index, "upgrade", customer))
                    self.stats.moves["(last half hour of the period)"] += 1
        for invoice_id, when in self._transfer_due.items():
            if when is not None and midnight <= when < midnight + timedelta(days=1):
                events.append((when, -1, "record_transfer", invoice_id))
        events.sort(key=lambda event: (event[0], event[1]))
        for at, _, move, subject in events:
            if isinstance(subject, Customer):
                self._act(subject, move, at)
            else:
                self._record_transfer(subject, at)

    def _menu(self, customer: Customer) -> dict[str, float]:
        """The moves open to this organisation now, with their chance a day."""
        if customer.organisation_id is None:
            return {}
        subscription = self._subscriptions.get(customer.organisation_id)
        if subscription is None or subscription.organisation.status != "active":
            return {}
        moves = self._state_menu(customer, subscription)
        if customer.open_dispute:
            moves = {**moves, "dispute_decided": DISPUTE_DECIDED}
        return moves

    def _state_menu(self, customer: Customer, subscription: Subscription) -> dict[str, float]:
        status = subscription.status
        if status == Subscription.Status.INCOMPLETE:
            moves = INCOMPLETE_MOVES
        elif status == Subscription.Status.ENDED:
            moves = ENDED_MOVES
        elif status in (
            Subscription.Status.PAST_DUE,
            Subscription.Status.GRACE,
            Subscription.Status.SUSPENDED,
        ):
            moves = dict(FAILING_MOVES)
            if subscription.payment_method_kind != PaymentMethodKind.CARD:
                # Paid by transfer: ops record it when it arrives; no card to fix.
                moves.pop("replace_card")
                moves.pop("retry_payment")
            elif customer.slow_payer:
                moves["replace_card"] /= 6
                moves["retry_payment"] /= 6
                moves["confirm_payment"] /= 6
            if "confirm_payment" in moves and not self._waits_for_bank(customer):
                moves.pop("confirm_payment")
            if status != Subscription.Status.GRACE:
                moves.pop("extend_grace")
            if status != Subscription.Status.SUSPENDED:
                moves.pop("write_off")
        elif subscription.cancel_at_period_end:
            moves = CANCELLED_MOVES
        else:
            moves = dict(ACTIVE_MOVES)
            rank = subscription.plan.rank
            if rank == max(self._ranks):
                moves.pop("upgrade")
            if rank == min(self._ranks) or subscription.pk in self._scheduled_downgrades:
                moves.pop("downgrade")
            if subscription.pk in self._scheduled_downgrades:
                moves.update(SCHEDULED_DOWNGRADE_MOVES)
            if (
                subscription.billing_cycle == BillingCycle.ANNUAL
                or subscription.scheduled_billing_cycle
            ):
                moves.pop("switch_to_annual")
            if customer.card_bad:
                moves.update(BAD_CARD_WHILE_ACTIVE)
                moves.pop("card_goes_bad")
            if not customer.prefers_transfer or (
                subscription.billing_cycle == BillingCycle.MONTHLY
                and not subscription.scheduled_billing_cycle
            ):
                moves.pop("invoice_by_transfer")
            if subscription.payment_method_kind == PaymentMethodKind.CARD:
                moves.pop("invoice_by_card")
        return moves

    def _waits_for_bank(self, customer: Customer) -> bool:
        return Invoice.objects.filter(
            organisation_id=customer.organisation_id,
            status=Invoice.Status.OPEN,
            payments__status=Payment.Status.REQUIRES_ACTION,
        ).exists()

    def _choose_move(self, customer: Customer, *, surely: bool = False) -> str | None:
        moves = self._menu(customer)
        if not moves:
            return None
        if surely:
            return self.rng.choices(list(moves), weights=list(moves.values()))[0]
        draw = self.rng.random()
        for move, chance in moves.items():
            draw -= chance * self.activity
            if draw < 0:
                return move
        return None

    # Ticks and usage -------------------------------------------------------------------

    def _tick(self, now: datetime) -> None:
        if self.last_tick is not None and now <= self.last_tick:
            return
        self._usage_until(now)
        with at_instant(now):
            for name in self.jobs:
                started = time.perf_counter()
                with self._errors(f"job {name}", now):
                    run_job(name, now=now)
                self.stats.job_seconds[name] += time.perf_counter() - started
        self.last_tick = now
        self.stats.ticks += 1
        self._refresh()
        self._schedule_transfers(now)

    def _billing_due_by(self, until: datetime) -> bool:
        """Whether a money job would find work by `until`, asked the way each job picks its
        rows: a period ended (billing run; end of a cancelled subscription), a closed usage
        month of an annual term over its limit and not billed (overage invoice), an open card
        invoice never charged or with a stale attempt (charge), a bank-transfer / PO invoice
        past due (dunning opens), a dunning step due, a deletion or one of its reminders due.
        A tick too many is harmless; one missed would leave the ledger to report it."""
        since = self.last_tick
        live = Subscription.objects.filter(organisation__status=Organisation.Status.ACTIVE)
        ended_by = Q(status__in=RENEWING, cancel_at_period_end=False) | (
            Q(cancel_at_period_end=True) & ~Q(status=Subscription.Status.ENDED)
        )
        if live.filter(ended_by, current_period_end__lte=until).exists():
            return True
        open_invoices = Invoice.objects.filter(status=Invoice.Status.OPEN)
        untried = ~Exists(Payment.objects.filter(invoice=OuterRef("pk")))
        stale = Exists(
            Payment.objects.filter(
                invoice=OuterRef("pk"),
                status=Payment.Status.PENDING,
                created_at__lte=until - PENDING_RETRY_AFTER,
            )
        )
        if (
            open_invoices.filter(payment_method_kind=PaymentMethodKind.CARD)
            .filter(untried | stale)
            .exclude(subscription__status=Subscription.Status.INCOMPLETE)
            .exists()
        ):
            return True
        if (
            open_invoices.exclude(payment_method_kind=PaymentMethodKind.CARD)
            .filter(due_at__lte=until, subscription__status=Subscription.Status.ACTIVE)
            .exists()
        ):
            return True
        for case in DunningCase.objects.filter(status=DunningCase.Status.OPEN).prefetch_related(
            "steps"
        ):
            done = {step.step for step in case.steps.all()}
            if any(step_due_at(case, s) <= until for s in DUNNING_ORDER if s not in done):
                return True
        subscriptions = {s.pk: s for s in live.select_related("organisation")}
        for month in overage_months_due(now=until):
            subscription = subscriptions.get(month.subscription_id)
            if (
                subscription is not None
                and usage_month_of(subscription, month.month_start)[1] <= until
            ):
                return True
        for subscription in subscriptions.values():
            if subscription.status == Subscription.Status.ENDED and subscription.ended_at:
                deletion = subscription.ended_at + DATA_KEPT_AFTER_END
                for before in (timedelta(days=7), timedelta(days=1), timedelta(0)):
                    if since < deletion - before <= until:
                        return True
        return False

    def _catch_up(self, customer: Customer, at: datetime) -> None:
        """Tick first at the quarter hour after this organisation's period ended, when that is
        before `at` (and no tick since): the 15-minute schedule would have run by then."""
        subscription = (
            Subscription.objects.filter(organisation_id=customer.organisation_id)
            .only("status", "current_period_end")
            .first()
        )
        if subscription is not None and subscription.status in RENEWING:
            run_at = _quarter_after(subscription.current_period_end)
            if run_at <= at:
                self._tick(run_at)

    def _refresh(self) -> None:
        self._subscriptions = {
            s.organisation_id: s
            for s in Subscription.objects.select_related("organisation", "plan").filter(
                organisation_id__in=[c.organisation_id for c in self.customers if c.organisation_id]
            )
        }
        self._scheduled_downgrades = set(
            PlanChange.objects.filter(status=PlanChange.Status.SCHEDULED).values_list(
                "subscription_id", flat=True
            )
        )

    def _usage_until(self, now: datetime) -> None:
        """Generate the records synced up to `now`, then post the batches due before a tick."""
        for customer in self.customers:
            self._generate(customer, now)
        for customer in self.customers:
            if not customer.pending:
                continue
            subscription = self._subscriptions.get(customer.organisation_id)
            month_closes = (
                subscription is not None
                and usage_month_of(subscription, customer.pending[0])[1] <= now
            )
            if month_closes or len(customer.pending) > 3000 or self.rng.random() < 0.35:
                self._post(customer, now)

    def _generate(self, customer: Customer, now: datetime) -> None:
        since = customer.generated_until
        customer.generated_until = now
        subscription = self._subscriptions.get(customer.organisation_id)
        if since is None or subscription is None or not customer.api_key:
            return
        if subscription.status not in SERVING or subscription.organisation.status != "active":
            return
        if customer.factor_until is None or since >= customer.factor_until:
            # This month's appetite: mostly within the limit, sometimes well above it.
            customer.factor = (
                self.rng.uniform(1.1, 2.5)
                if self.rng.random() < 0.35
                else self.rng.uniform(0.2, 0.9)
            )
            customer.factor_until = since + timedelta(days=30)
        seconds = (now - since).total_seconds()
        rate = subscription.plan.monthly_transactions * customer.factor / (30 * 86400)
        expected = rate * seconds
        count = int(expected) + (1 if self.rng.random() < expected - int(expected) else 0)
        customer.pending.extend(
            sorted(since + timedelta(seconds=self.rng.uniform(0, seconds)) for _ in range(count))
        )

    def _post(self, customer: Customer, now: datetime) -> None:
        """POST /api/v1/sync-info as the runtime does: the ingest service with the API key."""
        records, customer.pending = customer.pending, []
        flows = ProcessFlow.objects.filter(organisation_id=customer.organisation_id).order_by("pk")
        flows = list(
            flows.filter(status=ProcessFlow.Status.ACTIVE).values_list("public_id", flat=True)
        ) or list(flows.values_list("public_id", flat=True))
        with at_instant(now):
            key = api_key_authenticate(plain=customer.api_key, now=now)
            if key is None or not flows:
                return  # the organisation was deleted: its runtime gets 401
            for offset in range(0, len(records), 2000):
                chunk = records[offset : offset + 2000]
                body = json.dumps(
                    {
                        "records": [
                            {
                                "flow_id": str(self.rng.choice(flows)),
                                "record_key": f"SO-{customer.index}-{offset + n}",
                                "status": "failed"
                                if self.rng.random() < FAILED_SYNC_SHARE
                                else "success",
                                "direction": "outbound",
                                "synced_at": synced_at.isoformat(),
                            }
                            for n, synced_at in enumerate(chunk)
                        ]
                    }
                ).encode()
                customer.batches += 1
                result = sync_info_ingest(
                    key=key,
                    idempotency_key=f"sim-{self.seed}-{customer.index}-{customer.batches}",
                    body=body,
                    now=now,
                )
                if result.status_code != 201:
                    raise AssertionError(f"ingest refused a batch: {result.body}")
                self.stats.records += len(chunk)
                self.stats.batches += 1

    # Bank transfers and purchase orders (ops) ---------------------------------------------

    def _schedule_transfers(self, now: datetime) -> None:
        """Each new bank-transfer / PO invoice gets the day ops will record its payment."""
        new = Invoice.objects.filter(status=Invoice.Status.OPEN).exclude(
            payment_method_kind=PaymentMethodKind.CARD
        )
        for invoice_id, issued_at in new.values_list("pk", "issued_at").order_by("pk"):
            if invoice_id in self._transfer_due:
                continue
            draw = self.rng.random()
            delay = None
            for share, low, high in TRANSFER_DELAYS:
                draw -= share
                if draw < 0:
                    delay = None if low is None else timedelta(days=self.rng.uniform(low, high))
                    break
            self._transfer_due[invoice_id] = None if delay is None else max(issued_at, now) + delay

    def _record_transfer(self, invoice_id: int, at: datetime) -> None:
        invoice = Invoice.objects.get(pk=invoice_id)
        self._transfer_due[invoice_id] = None
        customer = next(c for c in self.customers if c.organisation_id == invoice.organisation_id)
        self._before_move(customer, at)
        with at_instant(at), self._errors(f"recording the transfer for {invoice.number}", at):
            try:
                payment_record_manual(
                    invoice=invoice,
                    actor=Actor(user=self.ops),
                    reference=f"BT-{invoice.number}",
                    now=at,
                    reason="Transfer received on the bank statement",
                )
            except ServiceError:
                self.stats.refused["record_transfer"] += 1  # written off or void meanwhile
            else:
                self.stats.moves["record_transfer"] += 1
        self._refresh_one(customer)

    # Moves -------------------------------------------------------------------------------

    def _before_move(self, customer: Customer, at: datetime) -> None:
        if customer.organisation_id is None:
            return
        self._catch_up(customer, at)
        self._generate(customer, at)

    def _act(self, customer: Customer, move: str, at: datetime) -> None:
        self._before_move(customer, at)
        with (
            at_instant(at),
            self._errors(f"move {move} of organisation {customer.organisation_id}", at),
        ):
            try:
                getattr(self, f"_move_{move}")(customer, at)
            except ServiceError as error:
                self.stats.refused[f"{move}: {error.message[:60]}"] += 1
            else:
                self.stats.moves[move] += 1
        self._refresh_one(customer)

    @contextmanager
    def _errors(self, what: str, at: datetime):
        if not self.record_errors:
            yield
            return
        try:
            yield
        except Exception as error:  # noqa: BLE001 - reported with the violations
            self.problems.append((at, f"{what} raised {type(error).__name__}: {error}"))

    def _refresh_one(self, customer: Customer) -> None:
        subscription = (
            Subscription.objects.select_related("organisation", "plan")
            .filter(organisation_id=customer.organisation_id)
            .first()
        )
        if subscription is not None:
            self._subscriptions[customer.organisation_id] = subscription
            scheduled = subscription.plan_changes.filter(status=PlanChange.Status.SCHEDULED)
            if scheduled.exists():
                self._scheduled_downgrades.add(subscription.pk)
            else:
                self._scheduled_downgrades.discard(subscription.pk)


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _quarter_after(moment: datetime) -> datetime:
    """The first quarter hour at or after `moment`: when the 15-minute schedule runs."""
    floor = moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)
    return floor if floor == moment else floor + QUARTER
