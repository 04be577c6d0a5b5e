"""Failed payments: the dunning case and its schedule (docs/architecture.md#billing).

Day 0: a charge of an invoice fails: email, status past due, first retry scheduled.
Day 3: second attempt, reminder email. Day 7: third and final attempt; if it fails, the
grace period starts (email). Day 14: still unpaid: suspended, every active ProcessFlow pauses
with reason "suspension" (email). Bank transfer and purchase-order invoices follow the same
days from their due date, with emails but no charge attempts.

Each step is a DunningStep row, unique per case: it is inserted (claimed) before the step does
anything, so a step runs once however often `tick` runs or however many workers run it. A
schedule running late runs only the latest step due and records the skipped ones.
Paying every open invoice (any day, any way) resolves the case and restores the service.

This module keeps the case's state and never charges a card: the charge attempts of days 3
and 7, Retry Payment and the retry after Update Card are billing.collection's.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q, Sum

from accounts.audit import SYSTEM, Actor, audit_record, reason_change
from accounts.emails import email_send
from accounts.selectors import billing_recipients
from billing.models import DunningCase, DunningStep, Invoice, Payment, amount_due_sql
from core.errors import ServiceError
from core.links import absolute_url
from subscriptions.models import PaymentMethodKind, PlanChange, Subscription
from subscriptions.services import process_flows_resume_suspended, process_flows_suspend
from subscriptions.states import subscription_transition

logger = logging.getLogger(__name__)

Step = DunningStep.Step
STEP_DAYS = {Step.DAY_0: 0, Step.DAY_3: 3, Step.DAY_7: 7, Step.DAY_14: 14}
ORDER = [Step.DAY_0, Step.DAY_3, Step.DAY_7, Step.DAY_14]
# A claimed step's result until its outcome is recorded.
RUNNING = "running"
# A step still "running" this long after it was claimed was interrupted (a killed worker) and
# is finished by the next run. Longer than a step takes, and than billing.payments'
# PENDING_RETRY_AFTER, so the charge it left unanswered is retried with its key.
STEP_RESUME_AFTER = timedelta(minutes=5)
# Statuses in which unpaid invoices are chased.
CHASED = (
    Subscription.Status.ACTIVE,
    Subscription.Status.PAST_DUE,
    Subscription.Status.GRACE,
    Subscription.Status.SUSPENDED,
)


def step_due_at(case: DunningCase, step: str) -> datetime:
    extra = case.grace_extension_days if step == Step.DAY_14 else 0
    return case.started_at + timedelta(days=STEP_DAYS[step] + extra)


def open_invoices(subscription: Subscription):
    """The open invoices dunning chases. An upgrade's invoice waiting for its payment is the
    upgrade's own business (a decline voids it); once its plan applied it is owed like any
    other (billing.reconciliation may withdraw the success that applied it)."""
    return Invoice.objects.filter(subscription=subscription, status=Invoice.Status.OPEN).exclude(
        Q(kind=Invoice.Kind.UPGRADE) & ~Q(plan_change__status=PlanChange.Status.APPLIED)
    )


def amount_due(subscription: Subscription) -> int:
    return open_invoices(subscription).aggregate(total=Sum(amount_due_sql()))["total"] or 0


def _context(case: DunningCase, subscription: Subscription) -> dict:
    organisation = subscription.organisation
    return {
        "case": case,
        "subscription": subscription,
        "amount_due": amount_due(subscription),
        "currency": subscription.currency,
        "suspension_at": step_due_at(case, Step.DAY_14),
        "final_attempt_at": step_due_at(case, Step.DAY_7),
        "payment_method_url": absolute_url("billing:payment_method", organisation.slug),
        "confirm_url": _confirm_url(subscription),
    }


def invoice_awaiting_authentication(subscription: Subscription) -> Invoice | None:
    """The first open invoice whose charge waits for the customer's bank (3-D Secure)."""
    return (
        open_invoices(subscription)
        .filter(payments__status=Payment.Status.REQUIRES_ACTION)
        .order_by("issued_at", "pk")
        .first()
    )


def _confirm_url(subscription: Subscription) -> str:
    invoice = invoice_awaiting_authentication(subscription)
    if invoice is None:
        return ""
    return absolute_url("billing:confirm_payment", subscription.organisation.slug, invoice.number)


def _email(template: str, case: DunningCase, subscription: Subscription) -> None:
    email_send(
        template=template,
        to=billing_recipients(organisation=subscription.organisation),
        context=_context(case, subscription),
        organisation=subscription.organisation,
    )


def dunning_open(
    *, subscription: Subscription, started_at: datetime, now: datetime, result: str, attempts: int
) -> DunningCase | None:
    """Day 0: open the case (once), record the step, move the subscription to past due.

    Called in the transaction that recorded the failed charge (or found the overdue invoice).
    The failed-payment email itself is the day-0 email (billing.payments' payment_failed email, or
    the overdue email for bank transfer / purchase order).
    """
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    if subscription.status not in CHASED:
        return None
    case = DunningCase.objects.filter(
        subscription=subscription, status=DunningCase.Status.OPEN
    ).first()
    if case is not None:
        return case
    case = DunningCase.objects.create(
        organisation_id=subscription.organisation_id,
        subscription=subscription,
        started_at=started_at,
    )
    DunningStep.objects.create(
        case=case, step=Step.DAY_0, ran_at=now, attempts=attempts, result=result[:255]
    )
    if subscription.status == Subscription.Status.ACTIVE:
        subscription_transition(subscription=subscription, to=Subscription.Status.PAST_DUE, now=now)
    return case


def dunning_open_overdue(*, now: datetime) -> int:
    """Bank transfer / purchase order: an invoice unpaid past its due date opens the case."""
    overdue = (
        Invoice.objects.filter(
            status=Invoice.Status.OPEN,
            payment_method_kind__in=[
                PaymentMethodKind.BANK_TRANSFER,
                PaymentMethodKind.PURCHASE_ORDER,
            ],
            due_at__lte=now,
            subscription__status=Subscription.Status.ACTIVE,
        )
        .exclude(subscription__dunning_cases__status=DunningCase.Status.OPEN)
        .select_related("subscription", "subscription__organisation")
        .order_by("due_at")
    )
    opened = 0
    for invoice in overdue[:500]:
        with transaction.atomic():
            case = dunning_open(
                subscription=invoice.subscription,
                started_at=invoice.due_at,
                now=now,
                result=f"Invoice {invoice.number} unpaid after its due date",
                attempts=0,
            )
            if case is not None and case.started_at == invoice.due_at and case.steps.count() == 1:
                _email("payment_overdue", case, invoice.subscription)
                opened += 1
    return opened


def _due_step(case: DunningCase, done: set[str], now: datetime) -> tuple[str | None, list[str]]:
    """The latest step due and not yet run, and the earlier ones it skips."""
    due = [s for s in ORDER if s not in done and step_due_at(case, s) <= now]
    if not due:
        return None, []
    return due[-1], due[:-1]


@dataclass(frozen=True)
class ClaimedStep:
    """A step claimed by this run; `resumed_from` is when an interrupted run had claimed it."""

    case: DunningCase
    record: DunningStep
    step: str
    resumed_from: datetime | None = None


def dunning_cases_open(*, limit: int) -> list[int]:
    """The ids of the open cases, oldest first."""
    return list(
        DunningCase.objects.filter(status=DunningCase.Status.OPEN)
        .order_by("started_at")
        .values_list("pk", flat=True)[:limit]
    )


def dunning_step_claim(case_id: int, *, now: datetime) -> ClaimedStep | None:
    """Claim the case's step due by `now` (its unique row, result RUNNING), or the step an
    interrupted run left running past STEP_RESUME_AFTER; None when nothing is due here.

    A case whose subscription ended closes instead: no reminders or suspension for a service
    that is over. The unpaid invoice stays open for ops (write it off or collect it).
    """
    with transaction.atomic():
        case = (
            DunningCase.objects.select_for_update(skip_locked=True)
            .filter(pk=case_id, status=DunningCase.Status.OPEN)
            .first()
        )
        if case is None:
            return None
        ended = Subscription.objects.filter(
            pk=case.subscription_id, status=Subscription.Status.ENDED
        ).exists()
        if ended:
            case.status = DunningCase.Status.CLOSED
            case.closed_at = now
            case.save(update_fields=["status", "closed_at"])
            return None
        done = set(case.steps.values_list("step", flat=True))
        interrupted = (
            case.steps.filter(result=RUNNING, ran_at__lte=now - STEP_RESUME_AFTER)
            .order_by("-ran_at")
            .first()
        )
        if interrupted is not None and interrupted.step == max(done, key=ORDER.index):
            # The run that claimed it died before recording it: finish it now.
            return ClaimedStep(
                case=case,
                record=interrupted,
                step=interrupted.step,
                resumed_from=interrupted.ran_at,
            )
        step, skipped = _due_step(case, done, now)
        if step is None:
            return None
        try:
            with transaction.atomic():
                for earlier in skipped:
                    DunningStep.objects.create(
                        case=case,
                        step=earlier,
                        ran_at=now,
                        result="skipped: the schedule ran late",
                    )
                record = DunningStep.objects.create(
                    case=case, step=step, ran_at=now, result=RUNNING
                )
        except IntegrityError:
            return None
    return ClaimedStep(case=case, record=record, step=step)


def dunning_step_finish(
    claim: ClaimedStep, *, attempts: int, succeeded: bool, result: str, now: datetime
) -> bool:
    """Record a claimed step's outcome and move the schedule on, once: a run finishing an
    interrupted step may meet the slow run that claimed it (then False, nothing changes).

    Day 3 sends the reminder, day 7 starts the grace period, day 14 suspends the account and
    pauses its ProcessFlows; a case paid meanwhile (resolved) only gets the record.
    """
    with transaction.atomic():
        case = DunningCase.objects.select_for_update().get(pk=claim.case.pk)
        record = DunningStep.objects.select_for_update().get(pk=claim.record.pk)
        if record.result != RUNNING:
            return False
        subscription = (
            Subscription.objects.select_for_update()
            .select_related("organisation")
            .get(pk=case.subscription_id)
        )
        record.attempts = attempts
        record.succeeded = case.status == DunningCase.Status.RESOLVED or succeeded
        resumed = "resumed after an interruption; " if claim.resumed_from is not None else ""
        record.result = f"{resumed}{result}"[:255]
        record.save(update_fields=["attempts", "succeeded", "result"])
        if case.status != DunningCase.Status.OPEN:
            return True  # paid by this step: payment_succeeded resolved everything
        if claim.step == Step.DAY_3:
            _email("payment_reminder", case, subscription)
        elif claim.step == Step.DAY_7:
            subscription_transition(
                subscription=subscription, to=Subscription.Status.GRACE, now=now
            )
            _email("grace_period", case, subscription)
        elif claim.step == Step.DAY_14:
            _suspend(case, record, subscription, now=now)
    return True


def _suspend(
    case: DunningCase, record: DunningStep, subscription: Subscription, *, now: datetime
) -> None:
    """Day 14: the account is suspended and its active ProcessFlows pause (caller's
    transaction)."""
    subscription_transition(subscription=subscription, to=Subscription.Status.SUSPENDED, now=now)
    paused = process_flows_suspend(organisation=subscription.organisation, now=now)
    record.result = f"account suspended; {paused} active ProcessFlow(s) paused"
    record.save(update_fields=["result"])
    audit_record(
        organisation=subscription.organisation,
        actor=SYSTEM,
        action="subscription.suspended",
        target=subscription,
        target_label=f"{paused} ProcessFlow(s) paused",
        changes={"status": {"old": "grace", "new": "suspended"}},
        now=now,
    )
    _email("account_suspended", case, subscription)


def dunning_resolve_if_paid(*, subscription: Subscription, now: datetime) -> bool:
    """Every open invoice is paid: the case closes, the subscription is active again, and the
    flows paused for suspension resume (caller's transaction, after recording a payment)."""
    subscription = (
        Subscription.objects.select_for_update()
        .select_related("organisation")
        .get(pk=subscription.pk)
    )
    if open_invoices(subscription).exists():
        return False
    case = (
        DunningCase.objects.select_for_update()
        .filter(subscription=subscription, status=DunningCase.Status.OPEN)
        .first()
    )
    was = subscription.status
    if case is None and was not in (
        Subscription.Status.PAST_DUE,
        Subscription.Status.GRACE,
        Subscription.Status.SUSPENDED,
    ):
        return False
    if case is not None:
        case.status = DunningCase.Status.RESOLVED
        case.closed_at = now
        case.save(update_fields=["status", "closed_at"])
    if was in (
        Subscription.Status.PAST_DUE,
        Subscription.Status.GRACE,
        Subscription.Status.SUSPENDED,
    ):
        subscription_transition(subscription=subscription, to=Subscription.Status.ACTIVE, now=now)
        resumed = process_flows_resume_suspended(organisation=subscription.organisation)
        audit_record(
            organisation=subscription.organisation,
            actor=SYSTEM,
            action="subscription.restored",
            target=subscription,
            target_label=f"{resumed} ProcessFlow(s) resumed",
            changes={"status": {"old": was, "new": "active"}},
            now=now,
        )
        if case is not None:
            _email("service_restored", case, subscription)
    return True


def dunning_extend_grace(
    *, case: DunningCase, days: int, actor: Actor, now: datetime, reason: str = ""
) -> DunningCase:
    """Ops push the suspension back by `days` (not once it happened)."""
    with transaction.atomic():
        case = DunningCase.objects.select_for_update().get(pk=case.pk)
        if case.status != DunningCase.Status.OPEN:
            raise ServiceError("This dunning case is closed.")
        if case.steps.filter(step=Step.DAY_14).exists():
            raise ServiceError("The account is already suspended; record the payment instead.")
        old = case.grace_extension_days
        case.grace_extension_days = old + days
        case.save(update_fields=["grace_extension_days"])
        audit_record(
            organisation=case.organisation,
            actor=actor,
            action="billing.grace_extended",
            target=case.subscription,
            changes={
                "grace_extension_days": {"old": old, "new": case.grace_extension_days},
                **reason_change(reason),
            },
            now=now,
        )
    return case


def invoice_mark_uncollectible(
    *, invoice: Invoice, actor: Actor, now: datetime, reason: str = ""
) -> Invoice:
    """Ops write an open invoice off; if nothing else is open the account is restored."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.status != Invoice.Status.OPEN:
            raise ServiceError(
                f"Invoice {invoice.number} is {invoice.get_status_display().lower()}."
            )
        invoice.status = Invoice.Status.UNCOLLECTIBLE
        invoice.closed_at = now
        invoice.save(update_fields=["status", "closed_at"])
        audit_record(
            organisation=invoice.organisation,
            actor=actor,
            action="billing.invoice_uncollectible",
            target=invoice,
            target_label=invoice.number,
            changes={"status": {"old": "open", "new": "uncollectible"}, **reason_change(reason)},
            now=now,
        )
        if invoice.subscription_id:
            dunning_resolve_if_paid(subscription=invoice.subscription, now=now)
    return invoice


def timeline(*, subscription: Subscription) -> dict | None:
    """What the customer sees on Payment Method: the steps so far and what comes next."""
    case = (
        DunningCase.objects.filter(subscription=subscription, status=DunningCase.Status.OPEN)
        .prefetch_related("steps")
        .first()
    )
    if case is None:
        return None
    done = {s.step: s for s in case.steps.all()}
    rows = []
    for step in ORDER:
        rows.append(
            {
                "step": step,
                "label": Step(step).label,
                "due_at": step_due_at(case, step),
                "record": done.get(step),
            }
        )
    upcoming = next((row for row in rows if row["record"] is None), None)
    return {
        "case": case,
        "rows": rows,
        "next": upcoming,
        "suspension_at": step_due_at(case, Step.DAY_14),
        "amount_due": amount_due(subscription),
    }
