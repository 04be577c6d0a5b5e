"""Downgrades: the review, scheduling for the renewal, cancelling, and pausing flows at renewal.

Article section 3: a downgrade never takes effect at once.
The Admin reviews every feature and limit that shrinks and the objects above the new limits,
may choose which ProcessFlows stay active, and confirms; the change is scheduled for the
renewal date and can be cancelled until then. At the renewal billing switches the plan and
calls `downgrade_apply_flows`, which pauses the ProcessFlows above the limit (reason
"plan limit"). Connections and environments above the limit are kept; the control plane
refuses new ones until the organisation is back under the limit.
"""

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction

from accounts.audit import SYSTEM, Actor, audit_record
from accounts.emails import email_send
from core.errors import ServiceError
from core.links import absolute_url
from subscriptions.models import (
    Connection,
    Environment,
    Plan,
    PlanChange,
    ProcessFlow,
    Subscription,
)
from subscriptions.selectors import (
    active_process_flows,
    plan_change_scheduled,
    subscription_recipients,
)
from subscriptions.states import SERVING

KEEP_FIELD = "keep"


@dataclass(frozen=True)
class LimitChange:
    label: str
    old: int
    new: int


@dataclass
class DowngradeReview:
    """What changes when `subscription` moves down to `plan` at its renewal."""

    subscription: Subscription
    plan: Plan
    features_removed: list[str]
    limits_shrinking: list[LimitChange]
    price_old: int
    price_new: int
    currency: str
    billing_cycle: str
    effective_at: datetime
    flow_limit: int
    active_flows: list[ProcessFlow]
    default_keep: list[ProcessFlow]
    flows_above: int
    connections_in_use: int
    connections_above: int
    environments_in_use: int
    environments_above: int
    connections_over: list[Connection] = field(default_factory=list)
    environments_over: list[Environment] = field(default_factory=list)

    @property
    def from_plan(self) -> Plan:
        return self.subscription.plan

    @property
    def anything_above(self) -> bool:
        return bool(self.flows_above or self.connections_above or self.environments_above)


def plan_differences(*, old: Plan, new: Plan) -> tuple[list[str], list[LimitChange]]:
    """The features lost and the limits that shrink from `old` to `new`, as shown to people.

    No queries: the Settings > Subscription page lists them for a scheduled change too.
    """
    features = []
    if old.allows_sso and not new.allows_sso:
        features.append("SAML single sign-on")
    if old.support_tier != new.support_tier:
        features.append(f"{old.get_support_tier_display()} → {new.get_support_tier_display()}")
    if new.sync_info_retention_days < old.sync_info_retention_days:
        features.append(
            f"Sync Info retention {old.sync_info_retention_days} → "
            f"{new.sync_info_retention_days} days"
        )
    if new.snapshot_retention_days < old.snapshot_retention_days:
        features.append(
            f"Snapshot retention {old.snapshot_retention_days} → {new.snapshot_retention_days} days"
        )
    lost_bank = old.allows_bank_transfer and not new.allows_bank_transfer
    lost_po = old.allows_purchase_order and not new.allows_purchase_order
    if lost_bank and lost_po:
        features.append("Bank transfer / purchase order invoicing")
    elif lost_bank:
        features.append("Bank transfer invoicing")
    elif lost_po:
        features.append("Purchase order invoicing")
    limits = [
        LimitChange(label, getattr(old, name), getattr(new, name))
        for label, name in (
            ("Integrations (app connections)", "max_connections"),
            ("Active ProcessFlows", "max_process_flows"),
            ("Environments", "max_environments"),
            ("Transactions per month", "monthly_transactions"),
        )
        if getattr(new, name) < getattr(old, name)
    ]
    return features, limits


def downgrade_refusal(*, subscription: Subscription | None, plan: Plan) -> str | None:
    """Why `subscription` cannot be scheduled to move down to `plan` now, or None."""
    if subscription is None:
        return "Your organisation has no subscription yet: choose a plan first."
    current = subscription.plan
    if plan.pk == current.pk:
        return f"You are already on the {current.name} plan."
    if plan.rank > current.rank:
        return (
            f"{plan.name} is a higher plan than {current.name}. Use Upgrade Plan for a higher "
            f"plan: it takes effect at once."
        )
    if not plan.is_public or plan.price_for(subscription.currency) is None:
        return f"The {plan.name} plan is retired or unknown: choose one of the plans listed."
    return plan_change_refusal(subscription=subscription)


def plan_change_refusal(*, subscription: Subscription) -> str | None:
    """Why the subscription's plan cannot be changed now, whatever the plan, or None."""
    if subscription.status not in SERVING:
        return (
            f"Your subscription is {subscription.get_status_display().lower()}, so its plan "
            f"cannot be changed now."
        )
    if subscription.cancel_at_period_end:
        return (
            "Your subscription is cancelled and ends at the end of this period. Undo the "
            "cancellation first to change your plan."
        )
    return None


def _split_flows(
    active: list[ProcessFlow], *, keep_ids: set[str], limit: int
) -> tuple[list[ProcessFlow], list[ProcessFlow]]:
    """(kept, paused): the chosen flows, then the oldest others up to `limit`; the rest pause.

    `active` is ordered oldest first.
    """
    kept = [flow for flow in active if str(flow.public_id) in keep_ids][:limit]
    chosen = {flow.pk for flow in kept}
    for flow in active:
        if len(kept) >= limit:
            break
        if flow.pk not in chosen:
            kept.append(flow)
            chosen.add(flow.pk)
    return kept, [flow for flow in active if flow.pk not in chosen]


def _newest_first(queryset, limit: int) -> tuple[int, int, list]:
    """(count, how many are above `limit`, those newest ones, newest first)."""
    rows = list(queryset.order_by("-created_at", "-pk"))
    above = max(0, len(rows) - limit)
    return len(rows), above, rows[:above]


def downgrade_review(*, subscription: Subscription, plan: Plan) -> DowngradeReview:
    """Everything the review step shows: features lost,
    limits that shrink, the price, and the objects above the new limits.

    The objects above a limit are the newest ones; by default the oldest active ProcessFlows
    (up to the new limit) stay active.
    """
    organisation = subscription.organisation
    old = subscription.plan
    features, limits = plan_differences(old=old, new=plan)
    cycle = subscription.billing_cycle
    active = active_process_flows(organisation=organisation)
    default_keep, _ = _split_flows(active, keep_ids=set(), limit=plan.max_process_flows)
    connections_in_use, connections_above, connections_over = _newest_first(
        Connection.objects.filter(organisation=organisation).select_related("environment"),
        plan.max_connections,
    )
    environments_in_use, environments_above, environments_over = _newest_first(
        Environment.objects.filter(organisation=organisation), plan.max_environments
    )
    old_price = old.price_for(subscription.currency)
    return DowngradeReview(
        subscription=subscription,
        plan=plan,
        features_removed=features,
        limits_shrinking=limits,
        price_old=old_price.amount_for(cycle) if old_price else subscription.current_price,
        price_new=plan.price_for(subscription.currency).amount_for(cycle),
        currency=subscription.currency,
        billing_cycle=cycle,
        effective_at=subscription.current_period_end,
        flow_limit=plan.max_process_flows,
        active_flows=active,
        default_keep=default_keep,
        flows_above=max(0, len(active) - plan.max_process_flows),
        connections_in_use=connections_in_use,
        connections_above=connections_above,
        environments_in_use=environments_in_use,
        environments_above=environments_above,
        connections_over=connections_over,
        environments_over=environments_over,
    )


def downgrade_flows_to_pause(*, subscription: Subscription, change: PlanChange) -> list:
    """The active ProcessFlows that would pause if the scheduled `change` applied now."""
    active = active_process_flows(organisation=subscription.organisation)
    _, to_pause = _split_flows(
        active, keep_ids=set(change.keep_flow_ids or []), limit=change.to_plan.max_process_flows
    )
    return to_pause


def _lock_subscription(subscription: Subscription) -> Subscription:
    return (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("organisation", "plan")
        .prefetch_related("plan__prices")
        .get(pk=subscription.pk)
    )


def _subscription_url(subscription: Subscription) -> str:
    return absolute_url("subscriptions:settings", subscription.organisation.slug)


def downgrade_schedule(
    *,
    subscription: Subscription,
    actor: Actor,
    plan: Plan,
    keep_flow_ids: list | None,
    now: datetime,
) -> PlanChange:
    """Schedule a move down to `plan` for the renewal date (article section 3: "takes effect
    at the next renewal date (not immediately)").

    `keep_flow_ids` are the active ProcessFlows (public ids) the Admin chose to keep, at most
    the new plan's limit; None keeps the oldest ones. The stored set is the chosen flows plus
    the oldest others up to the limit, so it says exactly which flows stay active as things
    are now. A downgrade already scheduled is replaced (it becomes cancelled).
    """
    with transaction.atomic():
        subscription = _lock_subscription(subscription)
        organisation = subscription.organisation
        refusal = downgrade_refusal(subscription=subscription, plan=plan)
        if refusal:
            raise ServiceError(refusal, code="plan")
        limit = plan.max_process_flows
        active = active_process_flows(organisation=organisation)
        chosen = _clean_keep_ids(keep_flow_ids, active=active, plan=plan)
        kept, to_pause = _split_flows(active, keep_ids=chosen, limit=limit)
        replaced = _cancel_scheduled(subscription, now=now)
        change = PlanChange.objects.create(
            subscription=subscription,
            kind=PlanChange.Kind.DOWNGRADE,
            status=PlanChange.Status.SCHEDULED,
            from_plan=subscription.plan,
            to_plan=plan,
            billing_cycle=subscription.billing_cycle,
            effective_at=subscription.current_period_end,
            keep_flow_ids=[str(flow.public_id) for flow in kept],
            created_by=actor.user,
            created_at=now,
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="subscription.downgrade_scheduled",
            target=subscription,
            target_label=f"{subscription.plan.name} subscription",
            changes=_scheduled_changes(
                subscription, plan, change, to_pause=to_pause, replaced=replaced
            ),
            now=now,
        )
        _downgrade_scheduled_email_send(subscription, plan, change, to_pause=to_pause, actor=actor)
    return change


def plan_change_cancel(change: PlanChange, *, now: datetime) -> None:
    """A scheduled plan change will not happen (undone, replaced, or the subscription cancelled).
    The caller holds the subscription's lock."""
    change.status = PlanChange.Status.CANCELED
    change.closed_at = now
    change.save(update_fields=["status", "closed_at"])


def _cancel_scheduled(subscription: Subscription, *, now: datetime) -> PlanChange | None:
    """Cancel the plan change already scheduled, which a new downgrade replaces (returned)."""
    replaced = plan_change_scheduled(subscription=subscription)
    if replaced is not None:
        plan_change_cancel(replaced, now=now)
    return replaced


def _scheduled_changes(
    subscription: Subscription,
    plan: Plan,
    change: PlanChange,
    *,
    to_pause: list[ProcessFlow],
    replaced: PlanChange | None,
) -> dict:
    """The audit row's changes of a scheduled downgrade."""
    changes = {
        "plan": {"old": subscription.plan.code, "new": plan.code},
        "effective_at": {"old": None, "new": change.effective_at.isoformat()},
        "flows_to_pause": {"old": None, "new": [flow.name for flow in to_pause]},
    }
    if replaced is not None:
        changes["replaced"] = {"old": replaced.to_plan.code, "new": plan.code}
    return changes


def _downgrade_scheduled_email_send(
    subscription: Subscription,
    plan: Plan,
    change: PlanChange,
    *,
    to_pause: list[ProcessFlow],
    actor: Actor,
) -> None:
    organisation = subscription.organisation
    email_send(
        template="downgrade_scheduled",
        to=subscription_recipients(organisation=organisation),
        organisation=organisation,
        context={
            "change": change,
            "from_plan": subscription.plan,
            "to_plan": plan,
            "flows_to_pause": to_pause,
            "limit": plan.max_process_flows,
            "actor_email": actor.email,
            "subscription_url": _subscription_url(subscription),
        },
    )


def _clean_keep_ids(keep_flow_ids, *, active: list[ProcessFlow], plan: Plan) -> set[str]:
    if keep_flow_ids is None:
        return set()
    try:
        chosen = {str(uuid.UUID(str(value))) for value in keep_flow_ids}
    except ValueError:
        chosen = None
    if chosen is None or not chosen <= {str(flow.public_id) for flow in active}:
        raise ServiceError(
            "Choose the ProcessFlows to keep among your organisation's active ProcessFlows.",
            field=KEEP_FIELD,
        )
    limit = plan.max_process_flows
    if len(chosen) > limit:
        noun = "ProcessFlow" if limit == 1 else "ProcessFlows"
        raise ServiceError(
            f"The {plan.name} plan includes {limit} active {noun}: keep at most {limit} "
            f"(you chose {len(chosen)}).",
            field=KEEP_FIELD,
        )
    return chosen


def downgrade_cancel(*, subscription: Subscription, actor: Actor, now: datetime) -> PlanChange:
    """Cancel the scheduled downgrade: the subscription stays on its plan (a
    downgrade is cancellable until the renewal)."""
    with transaction.atomic():
        subscription = _lock_subscription(subscription)
        change = plan_change_scheduled(subscription=subscription)
        if change is None:
            raise ServiceError("No plan change is scheduled.", code="none")
        plan_change_cancel(change, now=now)
        audit_record(
            organisation=subscription.organisation,
            actor=actor,
            action="subscription.downgrade_canceled",
            target=subscription,
            target_label=f"{subscription.plan.name} subscription",
            changes={
                "scheduled_plan": {"old": change.to_plan.code, "new": None},
            },
            now=now,
        )
    return change


def downgrade_apply_flows(
    *, subscription: Subscription, change: PlanChange, now: datetime
) -> list[ProcessFlow]:
    """Pause the active ProcessFlows above the new plan's limit, at the renewal that applied
    `change` (those flows pause with reason plan limit).

    Billing calls it inside its renewal transaction, after the plan switched. The flows the
    Admin kept stay active while they still are; free places go to the oldest other active
    flows (those created since); every other active flow pauses. Flows already paused
    (by a user, say) are left as they are. Returns the flows it paused.
    """
    organisation = subscription.organisation
    plan = change.to_plan
    active = list(
        ProcessFlow.objects.select_for_update()
        .filter(organisation=organisation, status=ProcessFlow.Status.ACTIVE)
        .select_related("environment")
        .order_by("created_at", "pk")
    )
    _, to_pause = _split_flows(
        active, keep_ids=set(change.keep_flow_ids or []), limit=plan.max_process_flows
    )
    if to_pause:
        _pause_for_plan_limit(to_pause, now=now)
        audit_record(
            organisation=organisation,
            actor=SYSTEM,
            action="subscription.downgrade_flows_paused",
            target=subscription,
            target_label=f"{plan.name} subscription",
            changes={"paused_flows": {"old": None, "new": [flow.name for flow in to_pause]}},
            now=now,
        )
    _downgrade_applied_email_send(subscription, change, paused=to_pause)
    return to_pause


def _pause_for_plan_limit(flows: list[ProcessFlow], *, now: datetime) -> None:
    """Pause the (locked) flows with reason plan limit, in the database and in memory."""
    ProcessFlow.objects.filter(
        pk__in=[flow.pk for flow in flows], status=ProcessFlow.Status.ACTIVE
    ).update(
        status=ProcessFlow.Status.PAUSED,
        pause_reason=ProcessFlow.PauseReason.PLAN_LIMIT,
        paused_at=now,
    )
    for flow in flows:
        flow.status = ProcessFlow.Status.PAUSED
        flow.pause_reason = ProcessFlow.PauseReason.PLAN_LIMIT
        flow.paused_at = now


def _downgrade_applied_email_send(
    subscription: Subscription, change: PlanChange, *, paused: list[ProcessFlow]
) -> None:
    """The email of an applied downgrade: the flows paused and what is above the new limits."""
    organisation = subscription.organisation
    plan = change.to_plan
    connections = Connection.objects.filter(organisation=organisation).count()
    environments = Environment.objects.filter(organisation=organisation).count()
    email_send(
        template="downgrade_applied",
        to=subscription_recipients(organisation=organisation),
        organisation=organisation,
        context={
            "change": change,
            "from_plan": change.from_plan,
            "to_plan": plan,
            "paused_flows": paused,
            "connections": connections,
            "environments": environments,
            "connections_above": max(0, connections - plan.max_connections),
            "environments_above": max(0, environments - plan.max_environments),
            "subscription_url": _subscription_url(subscription),
        },
    )
