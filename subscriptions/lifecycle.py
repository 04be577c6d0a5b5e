"""Subscription creation and period changes. Money moves in billing, which calls these."""

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Prefetch

from accounts.models import Organisation
from core.errors import ServiceError
from subscriptions.models import (
    BillingCycle,
    PaymentMethodKind,
    Plan,
    PlanChange,
    PlanPrice,
    Subscription,
)
from subscriptions.periods import period_bounds
from subscriptions.states import subscription_transition


@dataclass(frozen=True)
class Period:
    """One billing period of a subscription and what it costs."""

    start: datetime
    end: datetime
    plan: Plan
    billing_cycle: str
    price: int
    # The scheduled downgrade this renewal applied, if any (its flows still need pausing).
    applied_change: PlanChange | None = None


def plan_price(*, plan: Plan, currency: str) -> PlanPrice:
    price = plan.price_for(currency)  # uses prefetched prices when the caller loaded them
    if price is None:
        raise ServiceError(f"The {plan.name} plan is not offered in {currency}.", field="currency")
    return price


def subscription_create(
    *,
    organisation: Organisation,
    plan: Plan,
    billing_cycle: str,
    currency: str,
    now: datetime,
    payment_method_kind: str = PaymentMethodKind.CARD,
) -> Subscription:
    """A new subscription waiting for its first payment; its first period starts now.

    If the organisation has an incomplete one (its first payment failed), it is reset to the
    new choice instead, so choosing again never creates a second subscription.
    """
    if billing_cycle not in BillingCycle.values:
        raise ServiceError("Choose monthly or annual billing.", field="billing_cycle")
    if not plan.allows_payment_method(payment_method_kind, billing_cycle):
        raise ServiceError(
            f"{PaymentMethodKind(payment_method_kind).label} is not available on the "
            f"{plan.name} plan with {billing_cycle} billing."
        )
    price = plan_price(plan=plan, currency=currency).amount_for(billing_cycle)
    start, end = period_bounds(anchor=now, cycle=billing_cycle, index=0, zone=organisation.tzinfo)
    existing = Subscription.objects.select_for_update().filter(organisation=organisation).first()
    fields = {
        "plan": plan,
        "billing_cycle": billing_cycle,
        "currency": currency,
        "payment_method_kind": payment_method_kind,
        "anchor_at": now,
        "period_index": 0,
        "current_period_start": start,
        "current_period_end": end,
        "current_price": price,
        "scheduled_billing_cycle": "",
    }
    if existing is None:
        return Subscription.objects.create(
            organisation=organisation,
            status=Subscription.Status.INCOMPLETE,
            created_at=now,
            status_changed_at=now,
            **fields,
        )
    return _subscription_reset(existing, fields, organisation=organisation, now=now)


def _subscription_reset(
    existing: Subscription, fields: dict, *, organisation: Organisation, now: datetime
) -> Subscription:
    """Reuse the organisation's ended or incomplete subscription for the new choice (`fields`);
    refused for any other: an organisation has one subscription."""
    if existing.status == Subscription.Status.ENDED:
        # Resubscribing after a cancellation ended the service: a new first invoice, paid,
        # makes it active again (the status machine allows ended -> incomplete only).
        subscription_transition(subscription=existing, to=Subscription.Status.INCOMPLETE, now=now)
        fields.update(
            {
                "cancel_at_period_end": False,
                "canceled_at": None,
                "cancellation_reason": "",
                "cancellation_detail": "",
                "ended_at": None,
            }
        )
    elif existing.status != Subscription.Status.INCOMPLETE:
        raise ServiceError(f"{organisation.name} already has a subscription.")
    for name, value in fields.items():
        setattr(existing, name, value)
    existing.save(update_fields=list(fields))
    return existing


def subscription_next_period(*, subscription: Subscription) -> Period:
    """Advance a subscription (row locked by the caller) to its next period; nothing is saved
    (subscriptions_save_periods does).

    A cycle switch scheduled by ops (article section 7) takes effect here, at the renewal:
    the new cycle is anchored at the renewal instant. So does a scheduled downgrade (article
    section 3): the plan switches and the change is marked applied. The price is the plan's
    price now, so a price change applies from each subscriber's next renewal.
    """
    zone = subscription.organisation.tzinfo
    applied = _apply_scheduled_downgrade(subscription)
    if subscription.scheduled_billing_cycle:
        subscription.billing_cycle = subscription.scheduled_billing_cycle
        subscription.scheduled_billing_cycle = ""
        subscription.anchor_at = subscription.current_period_end
        subscription.period_index = 0
    else:
        subscription.period_index += 1
    start, end = period_bounds(
        anchor=subscription.anchor_at,
        cycle=subscription.billing_cycle,
        index=subscription.period_index,
        zone=zone,
    )
    price = plan_price(plan=subscription.plan, currency=subscription.currency).amount_for(
        subscription.billing_cycle
    )
    subscription.current_period_start = start
    subscription.current_period_end = end
    subscription.current_price = price
    return Period(
        start=start,
        end=end,
        plan=subscription.plan,
        billing_cycle=subscription.billing_cycle,
        price=price,
        applied_change=applied,
    )


def scheduled_changes_prefetch() -> Prefetch:
    """Load each subscription's scheduled downgrade with its plan and prices in two queries."""
    return Prefetch(
        "plan_changes",
        queryset=PlanChange.objects.filter(status=PlanChange.Status.SCHEDULED)
        .select_related("to_plan")
        .prefetch_related("to_plan__prices"),
        to_attr="scheduled_changes",
    )


def _apply_scheduled_downgrade(subscription: Subscription) -> PlanChange | None:
    changes = getattr(subscription, "scheduled_changes", None)
    if changes is None:
        changes = list(
            subscription.plan_changes.filter(status=PlanChange.Status.SCHEDULED).select_related(
                "to_plan"
            )
        )
    due = [
        c
        for c in changes
        if c.effective_at is None or c.effective_at <= subscription.current_period_end
    ]
    if not due:
        return None
    change = due[0]
    subscription.plan = change.to_plan
    # Marked here, saved by subscriptions_save_periods: until then nothing is written, so the
    # upcoming invoice runs this same step as a dry run (billing.upcoming).
    change.status = PlanChange.Status.APPLIED
    change.closed_at = subscription.current_period_end
    return change


RENEWAL_FIELDS = [
    "plan_id",
    "billing_cycle",
    "scheduled_billing_cycle",
    "anchor_at",
    "period_index",
    "current_period_start",
    "current_period_end",
    "current_price",
]


def subscriptions_save_periods(
    subscriptions: list[Subscription], applied_changes: list[PlanChange] = ()
) -> None:
    """Save the period fields of many subscriptions advanced by subscription_next_period, and
    the scheduled downgrades it applied (`Period.applied_change`).

    One pipelined UPDATE per row (psycopg's executemany): Django's bulk_update builds a CASE
    per field and row, which cost more than the rest of a billing run together.
    """
    for change in applied_changes:
        change.save(update_fields=["status", "closed_at"])
    if not subscriptions:
        return
    table = connection.ops.quote_name(Subscription._meta.db_table)
    assignments = ", ".join(f"{connection.ops.quote_name(name)} = %s" for name in RENEWAL_FIELDS)
    rows = [[getattr(s, name) for name in RENEWAL_FIELDS] + [s.pk] for s in subscriptions]
    with connection.cursor() as cursor:
        cursor.executemany(f"UPDATE {table} SET {assignments} WHERE id = %s", rows)  # noqa: S608
