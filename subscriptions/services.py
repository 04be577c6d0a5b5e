"""Writes for the control plane (environments, connections, ProcessFlows) within plan limits.

The limits come from the organisation's plan: environments,
integrations (app connections) and *active* ProcessFlows; a paused flow does not count. Every
service that counts against a limit first locks the organisation row, so two creations (or
resumes) at the same moment are serialised and cannot both pass the check.
"""

from datetime import datetime

from django.db import transaction

from accounts.audit import Actor, audit_record
from accounts.models import Organisation
from accounts.services import organisation_lock
from core.errors import ServiceError
from subscriptions.models import (
    BillingCycle,
    Connection,
    Environment,
    PaymentMethodKind,
    ProcessFlow,
    Subscription,
)
from subscriptions.selectors import subscription_with_plan
from subscriptions.states import SERVING

NAME_MAX = {"environment": 80, "connection": 80, "application": 80, "process_flow": 120}

# What each limit is called in messages: (singular, plural).
LIMIT_NOUNS = {
    "environments": ("environment", "environments"),
    "connections": ("integration (app connection)", "integrations (app connections)"),
    "active_process_flows": ("active ProcessFlow", "active ProcessFlows"),
}
LIMIT_FIELDS = {
    "environments": "max_environments",
    "connections": "max_connections",
    "active_process_flows": "max_process_flows",
}


def _clean_name(value: str, *, label: str, max_length: int, field: str = "name") -> str:
    value = " ".join((value or "").split())
    if not value:
        raise ServiceError(f"Enter the {label}.", field=field)
    if len(value) > max_length:
        raise ServiceError(
            f"The {label} can be at most {max_length} characters (it has {len(value)}).",
            field=field,
        )
    return value


def status_refusal(subscription: Subscription | None, *, to: str) -> str | None:
    """Why nothing can be added or resumed under this subscription, or None when it serves.

    Only a serving subscription (active, past due, grace period) runs ProcessFlows; without
    one, or while it waits for its first payment, is suspended or has ended, the organisation
    must choose a plan or pay first. `to` completes the sentence: "to add environments".
    """
    if subscription is None:
        return (
            f"Your organisation has no subscription yet. Choose a plan in "
            f"Settings > Subscription {to}."
        )
    if subscription.status in SERVING:
        return None
    if subscription.status == Subscription.Status.INCOMPLETE:
        return (
            f"Your subscription is waiting for its first payment. Pay the first invoice in "
            f"Settings > Billing {to}."
        )
    if subscription.status == Subscription.Status.SUSPENDED:
        return (
            f"Your subscription is suspended because a payment failed. Use Retry Payment in "
            f"Settings > Billing > Payment Method {to}."
        )
    return f"Your subscription has ended. Choose a plan in Settings > Subscription {to}."


def limit_refusal(subscription: Subscription, *, limit: str, count: int, advice: str) -> str | None:
    """The message refusing one more `limit` ("environments", ...) at `count`, or None.

    `count` may already be above the limit after a downgrade; the message says so as it is.
    """
    included = getattr(subscription.plan, LIMIT_FIELDS[limit])
    if count < included:
        return None
    singular, plural = LIMIT_NOUNS[limit]
    noun = singular if included == 1 else plural
    return (
        f"Your {subscription.plan.name} plan includes {included} {noun} and you have {count}. "
        f"{advice}"
    )


def creation_refusal(subscription: Subscription | None, *, limit: str, count: int) -> str | None:
    """Why one more environment / connection / ProcessFlow cannot be added now, or None.

    The ProcessFlows page calls it to explain a missing form; the services raise it.
    """
    things = {
        "environments": "environments",
        "connections": "connections",
        "active_process_flows": "ProcessFlows",
    }[limit]
    refusal = status_refusal(subscription, to=f"to add {things}")
    if refusal:
        return refusal
    advice = (
        "Pause a ProcessFlow or upgrade your plan to add more."
        if limit == "active_process_flows"
        else "Upgrade your plan to add more."
    )
    return limit_refusal(subscription, limit=limit, count=count, advice=advice)


def _refuse_creation(organisation: Organisation, *, limit: str, count: int) -> Subscription:
    subscription = subscription_with_plan(organisation=organisation)
    refusal = creation_refusal(subscription, limit=limit, count=count)
    if refusal:
        raise ServiceError(refusal, code="limit")
    return subscription


def _active_flow_count(organisation: Organisation) -> int:
    return ProcessFlow.objects.filter(
        organisation=organisation, status=ProcessFlow.Status.ACTIVE
    ).count()


# Environments ----------------------------------------------------------------------------


def environment_create(
    *, organisation: Organisation, actor: Actor, now: datetime, name: str
) -> Environment:
    """Add an environment, within the plan's environment limit (article section 1).

    Names are unique in the organisation, ignoring case, so "Production" and "production"
    cannot both exist.
    """
    name = _clean_name(name, label="environment name", max_length=NAME_MAX["environment"])
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        environments = Environment.objects.filter(organisation=organisation)
        _refuse_creation(organisation, limit="environments", count=environments.count())
        if environments.filter(name__iexact=name).exists():
            raise ServiceError(f"There is already an environment called {name}.", field="name")
        environment = Environment.objects.create(
            organisation=organisation, name=name, created_at=now, created_by=actor.user
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="environment.created",
            target=environment,
            changes={"name": {"old": None, "new": name}},
            now=now,
        )
    return environment


# Connections -----------------------------------------------------------------------------


def connection_create(
    *,
    organisation: Organisation,
    actor: Actor,
    now: datetime,
    name: str,
    application: str,
    environment: Environment,
) -> Connection:
    """Add an app connection ("integration") in one of the organisation's environments.

    Counts against the plan's integrations limit (article section 1). Names are unique per
    environment, ignoring case.
    """
    name = _clean_name(name, label="connection name", max_length=NAME_MAX["connection"])
    application = _clean_name(
        application,
        label="application",
        max_length=NAME_MAX["application"],
        field="application",
    )
    if environment.organisation_id != organisation.pk:
        raise ServiceError("Choose one of your organisation's environments.", field="environment")
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        count = Connection.objects.filter(organisation=organisation).count()
        _refuse_creation(organisation, limit="connections", count=count)
        if Connection.objects.filter(environment=environment, name__iexact=name).exists():
            raise ServiceError(
                f"{environment.name} already has a connection called {name}.", field="name"
            )
        connection = Connection.objects.create(
            organisation=organisation,
            environment=environment,
            name=name,
            application=application,
            created_at=now,
            created_by=actor.user,
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="connection.created",
            target=connection,
            changes={
                "name": {"old": None, "new": name},
                "application": {"old": None, "new": application},
                "environment": {"old": None, "new": environment.name},
            },
            now=now,
        )
    return connection


# ProcessFlows ----------------------------------------------------------------------------


def _check_flow_connection(
    connection: Connection | None, *, organisation: Organisation, environment: Environment, field
) -> None:
    if connection is None:
        return
    if connection.organisation_id != organisation.pk:
        raise ServiceError("Choose one of your organisation's connections.", field=field)
    if connection.environment_id != environment.pk:
        raise ServiceError(
            f"{connection.name} is in the environment {connection.environment.name}. "
            f"Choose a connection of {environment.name}, where this ProcessFlow runs.",
            field=field,
        )


def process_flow_create(
    *,
    organisation: Organisation,
    actor: Actor,
    now: datetime,
    name: str,
    environment: Environment,
    source: Connection | None = None,
    target: Connection | None = None,
) -> ProcessFlow:
    """Add an active ProcessFlow, within the plan's limit of active ProcessFlows.

    The flow runs in one environment; its optional source and target are two different
    connections of that same environment.
    """
    name = _clean_name(name, label="ProcessFlow name", max_length=NAME_MAX["process_flow"])
    if environment.organisation_id != organisation.pk:
        raise ServiceError("Choose one of your organisation's environments.", field="environment")
    _check_flow_connection(
        source, organisation=organisation, environment=environment, field="source"
    )
    _check_flow_connection(
        target, organisation=organisation, environment=environment, field="target"
    )
    if source is not None and target is not None and source.pk == target.pk:
        raise ServiceError(
            "The source and the target must be different connections.", field="target"
        )
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        _refuse_creation(
            organisation, limit="active_process_flows", count=_active_flow_count(organisation)
        )
        flow = ProcessFlow.objects.create(
            organisation=organisation,
            environment=environment,
            name=name,
            source=source,
            target=target,
            status=ProcessFlow.Status.ACTIVE,
            created_at=now,
            created_by=actor.user,
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="process_flow.created",
            target=flow,
            changes={
                "name": {"old": None, "new": name},
                "environment": {"old": None, "new": environment.name},
                "source": {"old": None, "new": source.name if source else None},
                "target": {"old": None, "new": target.name if target else None},
            },
            now=now,
        )
    return flow


def _lock_flow(organisation: Organisation, flow: ProcessFlow) -> ProcessFlow:
    return ProcessFlow.objects.select_for_update().get(pk=flow.pk, organisation=organisation)


def process_flow_pause(
    *, organisation: Organisation, actor: Actor, now: datetime, flow: ProcessFlow
) -> ProcessFlow:
    """Pause an active ProcessFlow by hand (reason "user").

    Allowed whatever the subscription's state: stopping a flow never needs a plan. A flow
    paused by a user stays paused when a suspended account is paid up.
    """
    with transaction.atomic():
        flow = _lock_flow(organisation, flow)
        if flow.status == ProcessFlow.Status.PAUSED:
            raise ServiceError(
                f"{flow.name} is already paused ({flow.get_pause_reason_display()})."
            )
        flow.status = ProcessFlow.Status.PAUSED
        flow.pause_reason = ProcessFlow.PauseReason.USER
        flow.paused_at = now
        flow.save(update_fields=["status", "pause_reason", "paused_at"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="process_flow.paused",
            target=flow,
            changes={
                "status": {"old": ProcessFlow.Status.ACTIVE, "new": ProcessFlow.Status.PAUSED},
                "pause_reason": {"old": "", "new": ProcessFlow.PauseReason.USER},
            },
            now=now,
        )
    return flow


def process_flow_resume(
    *, organisation: Organisation, actor: Actor, now: datetime, flow: ProcessFlow
) -> ProcessFlow:
    """Resume a paused ProcessFlow by hand, within the plan's limit of active ProcessFlows.

    A flow may be resumed by hand once the cause of its pause is gone, and only while the
    subscription serves (active, past due or grace period):

    - paused by a user: yes, when the active flows are below the plan limit;
    - paused for the plan limit (at a downgrade): yes, when the active
      flows are below the limit now (another flow was paused, or the plan upgraded). Choosing
      which flows run is the Admin's call, as at the downgrade review;
    - paused for suspension: no while the account is suspended; they resume by themselves
      when the payment succeeds (article section 6). Should one still be paused after that,
      it may be resumed like any other;
    - stopped at cancellation: no while the subscription has ended; choosing a plan again
      comes first.

    Every check runs under the organisation lock, so two resumes cannot both take the last
    free place.
    """
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        flow = _lock_flow(organisation, flow)
        if flow.status == ProcessFlow.Status.ACTIVE:
            raise ServiceError(f"{flow.name} is already running.")
        subscription = subscription_with_plan(organisation=organisation)
        reason = flow.pause_reason
        _refuse_resume(organisation, flow, subscription)
        flow.status = ProcessFlow.Status.ACTIVE
        flow.pause_reason = ""
        flow.paused_at = None
        flow.save(update_fields=["status", "pause_reason", "paused_at"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="process_flow.resumed",
            target=flow,
            changes={
                "status": {"old": ProcessFlow.Status.PAUSED, "new": ProcessFlow.Status.ACTIVE},
                "pause_reason": {"old": reason, "new": ""},
            },
            now=now,
        )
    return flow


def _refuse_resume(
    organisation: Organisation, flow: ProcessFlow, subscription: Subscription | None
) -> None:
    """Refuse resuming while the cause of the pause remains (suspended, ended) or when the
    subscription does not serve or is at its limit of active ProcessFlows."""
    reason = flow.pause_reason
    if (
        reason == ProcessFlow.PauseReason.SUSPENSION
        and subscription is not None
        and subscription.status == Subscription.Status.SUSPENDED
    ):
        raise ServiceError(
            f"{flow.name} was paused because your account is suspended. It resumes by "
            f"itself once the payment succeeds: use Retry Payment in Settings > Billing > "
            f"Payment Method.",
            code="suspended",
        )
    if reason == ProcessFlow.PauseReason.CANCELLED and (
        subscription is None or subscription.status == Subscription.Status.ENDED
    ):
        raise ServiceError(
            f"{flow.name} stopped when your subscription ended. Choose a plan in "
            f"Settings > Subscription to run it again.",
            code="ended",
        )
    refusal = status_refusal(subscription, to="to resume ProcessFlows")
    if refusal:
        raise ServiceError(refusal, code="limit")
    refusal = limit_refusal(
        subscription,
        limit="active_process_flows",
        count=_active_flow_count(organisation),
        advice=f"Pause another ProcessFlow or upgrade your plan to resume {flow.name}.",
    )
    if refusal:
        raise ServiceError(refusal, code="limit")


# Subscriptions (ops) ---------------------------------------------------------------------


def subscription_schedule_annual_billing(
    *, subscription: Subscription, actor: Actor, now: datetime
) -> Subscription:
    """Switch a monthly subscription to annual billing at its next renewal (article section 7).

    Ops do it in Django admin for the account manager; the period in progress is unchanged and
    the renewal invoice charges the annual price.
    """
    with transaction.atomic():
        subscription = (
            Subscription.objects.select_for_update(of=("self",))
            .select_related("organisation", "plan")
            .get(pk=subscription.pk)
        )
        organisation = subscription.organisation
        if subscription.billing_cycle == BillingCycle.ANNUAL:
            raise ServiceError(f"{organisation.name} already bills annually.")
        if subscription.scheduled_billing_cycle == BillingCycle.ANNUAL:
            raise ServiceError(
                f"{organisation.name} already switches to annual billing at its next renewal."
            )
        if subscription.status == Subscription.Status.ENDED:
            raise ServiceError(f"The subscription of {organisation.name} has ended.")
        if subscription.plan.price_for(subscription.currency) is None:
            raise ServiceError(
                f"The {subscription.plan.name} plan has no price in {subscription.currency}."
            )
        old = subscription.scheduled_billing_cycle
        subscription.scheduled_billing_cycle = BillingCycle.ANNUAL
        subscription.save(update_fields=["scheduled_billing_cycle"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="subscription.billing_cycle_scheduled",
            target=subscription,
            target_label=f"{subscription.plan.name} subscription",
            changes={"scheduled_billing_cycle": {"old": old, "new": BillingCycle.ANNUAL}},
            now=now,
        )
    return subscription


def subscription_set_payment_method_kind(
    *, subscription: Subscription, kind: str, actor: Actor, now: datetime
) -> Subscription:
    """How future invoices are paid: card, bank transfer (annual plans) or purchase order
    (Enterprise annual) — article sections 5 and 7. Set by ops for the account manager;
    invoices already issued keep the way they were issued with."""
    with transaction.atomic():
        subscription = (
            Subscription.objects.select_for_update(of=("self",))
            .select_related("organisation", "plan")
            .get(pk=subscription.pk)
        )
        organisation = subscription.organisation
        cycle = subscription.scheduled_billing_cycle or subscription.billing_cycle
        if not subscription.plan.allows_payment_method(kind, cycle):
            raise ServiceError(
                f"{PaymentMethodKind(kind).label} is not available to {organisation.name}: "
                f"bank transfer needs annual billing, purchase orders the Enterprise plan with "
                f"annual billing ({subscription.plan.name}, {cycle} now)."
            )
        old = subscription.payment_method_kind
        if old == kind:
            return subscription
        subscription.payment_method_kind = kind
        subscription.save(update_fields=["payment_method_kind"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="subscription.payment_method_changed",
            target=subscription,
            target_label=f"{subscription.plan.name} subscription",
            changes={"payment_method_kind": {"old": old, "new": kind}},
            now=now,
        )
    return subscription


def process_flows_suspend(*, organisation: Organisation, now: datetime) -> int:
    """Suspension (article section 6, day 14): every ACTIVE flow pauses with reason
    "suspension"; flows already paused keep their own reason. Caller holds the transaction."""
    return ProcessFlow.objects.filter(
        organisation=organisation, status=ProcessFlow.Status.ACTIVE
    ).update(
        status=ProcessFlow.Status.PAUSED,
        pause_reason=ProcessFlow.PauseReason.SUSPENSION,
        paused_at=now,
    )


def process_flows_resume_suspended(*, organisation: Organisation) -> int:
    """Paid up: exactly the flows paused for suspension run again; flows paused by a user or by
    a plan limit stay paused."""
    return ProcessFlow.objects.filter(
        organisation=organisation,
        status=ProcessFlow.Status.PAUSED,
        pause_reason=ProcessFlow.PauseReason.SUSPENSION,
    ).update(status=ProcessFlow.Status.ACTIVE, pause_reason="", paused_at=None)
