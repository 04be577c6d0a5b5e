"""Reads for subscriptions and the control plane, always scoped to one organisation."""

from dataclasses import dataclass

from django.db import connection
from django.db.models import Count, Prefetch, QuerySet
from django.http import Http404

from accounts.models import Organisation
from accounts.selectors import account_recipients as subscription_recipients  # noqa: F401
from subscriptions.models import (
    Connection,
    Environment,
    Plan,
    PlanChange,
    ProcessFlow,
    Subscription,
)


@dataclass(frozen=True)
class PlanLimits:
    """What a plan includes."""

    plan: Plan
    environments: int
    connections: int
    active_process_flows: int
    monthly_transactions: int

    @classmethod
    def of(cls, plan: Plan) -> "PlanLimits":
        return cls(
            plan=plan,
            environments=plan.max_environments,
            connections=plan.max_connections,
            active_process_flows=plan.max_process_flows,
            monthly_transactions=plan.monthly_transactions,
        )


def subscription_for(*, organisation: Organisation) -> Subscription | None:
    """The organisation's subscription with its plan (and the plan's prices), or None."""
    return (
        Subscription.objects.select_related("plan")
        .prefetch_related("plan__prices")
        .filter(organisation=organisation)
        .first()
    )


def subscription_for_settings(*, organisation: Organisation) -> Subscription | None:
    """The organisation's subscription for Settings > Subscription, or None: its plan and the
    plan's prices, and its scheduled plan change (at most one) with both plans and the new
    plan's prices, in `scheduled_changes` as the billing run's loader has it
    (subscriptions.lifecycle.scheduled_changes_prefetch). The page reads this once and the
    upcoming invoice runs the billing run's dry run on a copy of it
    (docs/architecture.md#decision-the-upcoming-invoice-is-the-billing-run-as-a-dry-run).
    Three queries, four with a scheduled change."""
    return (
        Subscription.objects.select_related("plan")
        .prefetch_related(
            "plan__prices",
            Prefetch(
                "plan_changes",
                queryset=PlanChange.objects.filter(status=PlanChange.Status.SCHEDULED)
                .select_related("from_plan", "to_plan")
                .prefetch_related("to_plan__prices"),
                to_attr="scheduled_changes",
            ),
        )
        .filter(organisation=organisation)
        .first()
    )


def scheduled_downgrade(*, subscription: Subscription) -> PlanChange | None:
    """The downgrade scheduled for the renewal of a subscription loaded by
    subscription_for_settings, with both plans, or None (no query: plan_change_scheduled
    without the round trip)."""
    return next(
        (c for c in subscription.scheduled_changes if c.kind == PlanChange.Kind.DOWNGRADE), None
    )


def subscription_with_plan(*, organisation: Organisation) -> Subscription | None:
    """The organisation's subscription with its plan (one query; not the plan's prices, which
    subscription_for prefetches), or None."""
    return Subscription.objects.select_related("plan").filter(organisation=organisation).first()


def subscription_has_ended(*, organisation: Organisation) -> bool:
    """Whether the organisation's subscription has ended (one query; nothing cached)."""
    return Subscription.objects.filter(
        organisation=organisation, status=Subscription.Status.ENDED
    ).exists()


def environment_choices(*, organisation: Organisation) -> QuerySet[Environment]:
    """The organisation's environments by name: the choices of the forms that pick one."""
    return Environment.objects.filter(organisation=organisation).order_by("name", "pk")


def plan_limits(*, organisation: Organisation) -> PlanLimits | None:
    """The limits of the organisation's current plan; None when it has no subscription.

    Uses `organisation.subscription` when it is already loaded (one query otherwise).
    """
    try:
        subscription = organisation.subscription
    except Subscription.DoesNotExist:
        return None
    return PlanLimits.of(subscription.plan)


# Fixed text: composing it with the ORM (four correlated subqueries) cost ten times as much
# Python time as running it, on Settings > Subscription.
_USAGE_COUNTS_SQL = f"""
SELECT
    (SELECT count(*) FROM {Environment._meta.db_table} WHERE organisation_id = %(id)s),
    (SELECT count(*) FROM {Connection._meta.db_table} WHERE organisation_id = %(id)s),
    (SELECT count(*) FROM {ProcessFlow._meta.db_table}
        WHERE organisation_id = %(id)s AND status = %(active)s),
    (SELECT count(*) FROM {ProcessFlow._meta.db_table} WHERE organisation_id = %(id)s)
"""  # noqa: S608 - table names from the models, values as parameters


def usage_counts(*, organisation: Organisation) -> dict[str, int]:
    """What the organisation uses against its plan limits, in one query.

    Keys: "environments", "connections", "active_process_flows" (paused flows do not count
    against the plan) and "process_flows" (all of them).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            _USAGE_COUNTS_SQL, {"id": organisation.pk, "active": ProcessFlow.Status.ACTIVE.value}
        )
        row = cursor.fetchone()
    return dict(
        zip(
            ("environments", "connections", "active_process_flows", "process_flows"),
            row,
            strict=True,
        )
    )


def environment_list(*, organisation: Organisation) -> QuerySet[Environment]:
    """The environments, each with `connection_count` and `process_flow_count`."""
    return (
        Environment.objects.filter(organisation=organisation)
        .annotate(
            connection_count=Count("connections", distinct=True),
            process_flow_count=Count("process_flows", distinct=True),
        )
        .order_by("name", "pk")
    )


def process_flow_choices(*, organisation: Organisation) -> QuerySet[ProcessFlow]:
    """The organisation's ProcessFlows by name, with their environment: the choices of the
    Sync Info filter and the names shown in its rows."""
    return (
        ProcessFlow.objects.filter(organisation=organisation)
        .select_related("environment")
        .order_by("name", "pk")
    )


def connection_list(*, organisation: Organisation) -> QuerySet[Connection]:
    return (
        Connection.objects.filter(organisation=organisation)
        .select_related("environment")
        .order_by("environment__name", "name", "pk")
    )


def process_flow_list(*, organisation: Organisation) -> QuerySet[ProcessFlow]:
    return (
        ProcessFlow.objects.filter(organisation=organisation)
        .select_related("environment", "source", "target")
        .order_by("-created_at", "-pk")
    )


def process_flow_get(*, organisation: Organisation, public_id) -> ProcessFlow:
    flow = ProcessFlow.objects.filter(organisation=organisation, public_id=public_id).first()
    if flow is None:
        raise Http404("No such ProcessFlow in this organisation.")
    return flow


# Plan changes ----------------------------------------------------------------------------


def plan_get_by_code(*, code: str) -> Plan:
    """A plan of the catalogue by its code, with its prices; 404 when there is none."""
    plan = Plan.objects.prefetch_related("prices").filter(code=code).first()
    if plan is None:
        raise Http404("No such plan.")
    return plan


def plan_list_lower(*, subscription: Subscription) -> list[Plan]:
    """The public plans below the subscription's one offered in its currency, largest first."""
    plans = (
        Plan.objects.filter(is_public=True, rank__lt=subscription.plan.rank)
        .prefetch_related("prices")
        .order_by("-rank")
    )
    return [plan for plan in plans if plan.price_for(subscription.currency) is not None]


def plan_change_scheduled(*, subscription: Subscription) -> PlanChange | None:
    """The downgrade scheduled for the subscription's renewal, with both plans, or None."""
    return (
        PlanChange.objects.select_related("from_plan", "to_plan")
        .filter(
            subscription=subscription,
            kind=PlanChange.Kind.DOWNGRADE,
            status=PlanChange.Status.SCHEDULED,
        )
        .first()
    )


def active_process_flows(*, organisation: Organisation) -> list[ProcessFlow]:
    """The organisation's active ProcessFlows with their environment, oldest first."""
    return list(
        ProcessFlow.objects.filter(organisation=organisation, status=ProcessFlow.Status.ACTIVE)
        .select_related("environment")
        .order_by("created_at", "pk")
    )
