"""Cancel Subscription, its undo, and the end of a cancelled subscription at period end.

The rules (article section 8, and how long the data is kept after the end):

- Cancelling takes effect at once in that no further invoice or charge is ever made (the
  billing run skips subscriptions with `cancel_at_period_end`); the service keeps running
  until the current period ends: for monthly plans the end of the month paid for, for annual
  plans the end of the annual term, with no refund for unused months.
- The Admin may undo the cancellation until the period ends.
- At period end the subscription ends and every running ProcessFlow stops (reason
  "cancelled"); the organisation's data is kept for 30 days after that, then deleted for
  good (by retention), invoices and payment records excepted.

Subscriptions never import billing, so the recipients of the emails are read here.
"""

from datetime import datetime, timedelta

from django.db import transaction

from accounts.audit import SYSTEM, Actor, audit_record
from accounts.emails import email_send
from accounts.selectors import account_recipients as subscription_recipients
from core.errors import ServiceError
from core.links import absolute_url, organisation_day
from subscriptions.models import (
    BillingCycle,
    CancellationReason,
    PlanChange,
    ProcessFlow,
    Subscription,
)
from subscriptions.plan_changes import plan_change_cancel
from subscriptions.states import subscription_transition

Status = Subscription.Status

# How long the organisation's data is kept after the subscription ends.
DATA_KEPT_AFTER_END = timedelta(days=30)
DETAIL_MAX_LENGTH = 2000
# Suspended subscriptions may be cancelled too: nothing more is charged either way, and the
# Admin should not have to pay an open invoice first just to be allowed to leave.
CANCELLABLE = frozenset({Status.ACTIVE, Status.PAST_DUE, Status.GRACE, Status.SUSPENDED})
END_BATCH_SIZE = 50


def data_deletion_at(subscription: Subscription) -> datetime:
    """When the organisation's data is deleted: 30 days after the subscription ends.

    Before the end that is counted from the period end; once ended, from when it ended (the
    job runs a few minutes after the period end, so the data is never deleted earlier than
    announced).
    """
    if subscription.status == Status.ENDED and subscription.ended_at is not None:
        return subscription.ended_at + DATA_KEPT_AFTER_END
    return subscription.current_period_end + DATA_KEPT_AFTER_END


def _lock(subscription: Subscription) -> Subscription:
    return (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("organisation", "plan")
        .get(pk=subscription.pk)
    )


def cancellation_refusal(subscription: Subscription | None) -> str | None:
    """Why this subscription cannot be cancelled now, or None. Shown as it is."""
    if subscription is None:
        return "Your organisation has no subscription to cancel."
    organisation = subscription.organisation
    if subscription.status == Status.ENDED:
        ended = organisation_day(subscription.ended_at, organisation)
        return f"Your subscription already ended on {ended}."
    if subscription.cancel_at_period_end:
        return (
            f"Your subscription is already cancelled; it ends on "
            f"{organisation_day(subscription.current_period_end, organisation)}."
        )
    if subscription.status == Status.INCOMPLETE:
        return (
            "Your subscription has not started: its first invoice is not paid, so there is "
            "nothing to cancel and nothing more will be charged."
        )
    if subscription.status not in CANCELLABLE:
        status = subscription.get_status_display().lower()
        return f"A subscription that is {status} cannot be cancelled."
    return None


def _clean_reason(reason: str, detail: str) -> str:
    detail = (detail or "").strip()
    if reason not in CancellationReason.values:
        raise ServiceError("Choose one of the reasons for cancelling.", field="reason")
    if reason == CancellationReason.OTHER and not detail:
        raise ServiceError(
            "Tell us more: describe your reason for cancelling in a few words.", field="detail"
        )
    if len(detail) > DETAIL_MAX_LENGTH:
        raise ServiceError(
            f"Keep it to {DETAIL_MAX_LENGTH:,} characters (it has {len(detail):,}).",
            field="detail",
        )
    return detail


def subscription_cancel(
    *, subscription: Subscription, actor: Actor, reason: str, detail: str, now: datetime
) -> Subscription:
    """Cancel at period end (article section 8): no further charge from now on, service until
    the period ends, then the subscription ends and the data is kept 30 days.

    Refused, changing nothing, when there is nothing to cancel (no payment yet, already
    cancelled or ended) or a plan upgrade is waiting for its payment. A downgrade scheduled
    for the renewal is cancelled too: there will be no renewal. `reason` is one of
    CancellationReason; "other" needs a `detail`.
    """
    detail = _clean_reason(reason, detail)
    with transaction.atomic():
        subscription = _lock(subscription)
        organisation = subscription.organisation
        refusal = cancellation_refusal(subscription)
        if refusal:
            raise ServiceError(refusal, code="not_cancellable")
        downgrade = _cancel_scheduled_downgrade(subscription, now=now)
        subscription.cancel_at_period_end = True
        subscription.canceled_at = now
        subscription.cancellation_reason = reason
        subscription.cancellation_detail = detail
        subscription.save(
            update_fields=[
                "cancel_at_period_end",
                "canceled_at",
                "cancellation_reason",
                "cancellation_detail",
            ]
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="subscription.cancelled",
            target=subscription,
            target_label=f"{subscription.plan.name} subscription",
            changes=_cancellation_changes(subscription, reason, detail, downgrade),
            now=now,
        )
        _cancelled_email_send(subscription, actor=actor, reason=reason)
    return subscription


def _cancel_scheduled_downgrade(subscription: Subscription, *, now: datetime) -> PlanChange | None:
    """Lock the subscription's plan changes: refuse while an upgrade waits for its payment,
    and cancel the downgrade scheduled for the renewal there will not be (returned)."""
    plan_changes = PlanChange.objects.select_for_update().filter(subscription=subscription)
    if plan_changes.filter(status=PlanChange.Status.PENDING).exists():
        raise ServiceError(
            "A plan upgrade is waiting for its payment. Cancel once it has gone through "
            "(see Settings > Billing > Invoice History).",
            code="upgrade_pending",
        )
    downgrade = plan_changes.filter(status=PlanChange.Status.SCHEDULED).first()
    if downgrade is not None:
        plan_change_cancel(downgrade, now=now)
    return downgrade


def _cancellation_changes(
    subscription: Subscription, reason: str, detail: str, downgrade: PlanChange | None
) -> dict:
    """The audit row's changes of a cancellation."""
    changes = {
        "cancel_at_period_end": {"old": False, "new": True},
        "cancellation_reason": {"old": "", "new": reason},
        "ends_at": {"old": None, "new": subscription.current_period_end.isoformat()},
    }
    if detail:
        changes["cancellation_detail"] = {"old": "", "new": detail}
    if downgrade is not None:
        changes["scheduled_plan_change"] = {
            "old": f"{downgrade.get_kind_display()} to {downgrade.to_plan.name}",
            "new": None,
        }
    return changes


def _cancelled_email_send(subscription: Subscription, *, actor: Actor, reason: str) -> None:
    organisation = subscription.organisation
    email_send(
        template="subscription_cancelled",
        to=subscription_recipients(organisation=organisation),
        organisation=organisation,
        context={
            "subscription": subscription,
            "plan": subscription.plan,
            "is_annual": subscription.billing_cycle == BillingCycle.ANNUAL,
            "ends_at": subscription.current_period_end,
            "deletion_at": data_deletion_at(subscription),
            "canceled_by": actor.email,
            "reason_label": CancellationReason(reason).label,
            "subscription_url": absolute_url("subscriptions:settings", organisation.slug),
            "export_url": absolute_url("retention:privacy", organisation.slug),
        },
    )


def subscription_cancel_undo(
    *, subscription: Subscription, actor: Actor, now: datetime
) -> Subscription:
    """Undo a cancellation while the period runs: the subscription
    renews again as before. The reason given stays in the audit row. A downgrade that the
    cancellation cancelled is not brought back; the Admin may schedule it again.
    """
    with transaction.atomic():
        subscription = _lock(subscription)
        organisation = subscription.organisation
        if subscription.status == Status.ENDED or (
            subscription.cancel_at_period_end and now >= subscription.current_period_end
        ):
            ended = subscription.ended_at or subscription.current_period_end
            raise ServiceError(
                f"The period ended on {organisation_day(ended, organisation)}; "
                "choose a plan to subscribe again.",
                code="ended",
            )
        if not subscription.cancel_at_period_end:
            raise ServiceError("Your subscription is not cancelled.", code="not_cancelled")
        changes = {
            "cancel_at_period_end": {"old": True, "new": False},
            "cancellation_reason": {"old": subscription.cancellation_reason, "new": ""},
            "canceled_at": {"old": subscription.canceled_at.isoformat(), "new": None},
        }
        if subscription.cancellation_detail:
            changes["cancellation_detail"] = {"old": subscription.cancellation_detail, "new": ""}
        subscription.cancel_at_period_end = False
        subscription.canceled_at = None
        subscription.cancellation_reason = ""
        subscription.cancellation_detail = ""
        subscription.save(
            update_fields=[
                "cancel_at_period_end",
                "canceled_at",
                "cancellation_reason",
                "cancellation_detail",
            ]
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="subscription.cancellation_undone",
            target=subscription,
            target_label=f"{subscription.plan.name} subscription",
            changes=changes,
            now=now,
        )
    return subscription


def _end(subscription: Subscription, *, now: datetime) -> int:
    """End one cancelled subscription (row and organisation locked by the caller)."""
    organisation = subscription.organisation
    old_status = subscription.status
    subscription_transition(subscription=subscription, to=Status.ENDED, now=now)
    # The flag means "ends at period end"; once ended it is history (canceled_at and the
    # reason stay), and the partial index of due cancellations stays small.
    subscription.cancel_at_period_end = False
    subscription.save(update_fields=["cancel_at_period_end"])
    # Flows already paused keep their reason (user, plan limit, suspension).
    paused = ProcessFlow.objects.filter(
        organisation=organisation, status=ProcessFlow.Status.ACTIVE
    ).update(
        status=ProcessFlow.Status.PAUSED,
        pause_reason=ProcessFlow.PauseReason.CANCELLED,
        paused_at=now,
    )
    audit_record(
        organisation=organisation,
        actor=SYSTEM,
        action="subscription.ended",
        target=subscription,
        target_label=f"{subscription.plan.name} subscription",
        changes={
            "status": {"old": old_status, "new": Status.ENDED},
            "process_flows_stopped": {"old": None, "new": paused},
        },
        now=now,
    )
    email_send(
        template="subscription_ended",
        to=subscription_recipients(organisation=organisation),
        organisation=organisation,
        context={
            "subscription": subscription,
            "plan": subscription.plan,
            "ended_at": subscription.ended_at,
            "deletion_at": data_deletion_at(subscription),
            "process_flows_stopped": paused,
            "choose_plan_url": absolute_url("billing:choose_plan", organisation.slug),
            "export_url": absolute_url("retention:privacy", organisation.slug),
        },
    )
    return paused


def subscriptions_end_cancelled(*, now: datetime, batch_size: int = END_BATCH_SIZE) -> int:
    """The scheduled job: end every cancelled subscription whose period has ended.

    Each batch is claimed with SKIP LOCKED (the subscription and its organisation row, so a
    ProcessFlow cannot be created or resumed between the check and the stop), so two runs at
    once never end the same subscription, and a run finds nothing once they are ended.
    Returns how many subscriptions ended.
    """
    ended = 0
    while True:
        with transaction.atomic():
            batch = list(
                Subscription.objects.select_for_update(
                    skip_locked=True, of=("self", "organisation")
                )
                .select_related("organisation", "plan")
                .filter(cancel_at_period_end=True, current_period_end__lte=now)
                .exclude(status=Status.ENDED)
                .order_by("current_period_end", "pk")[:batch_size]
            )
            if not batch:
                return ended
            for subscription in batch:
                _end(subscription, now=now)
                ended += 1
