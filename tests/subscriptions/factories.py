from datetime import UTC, datetime

import factory
from dateutil.relativedelta import relativedelta

from subscriptions.models import (
    BillingCycle,
    Connection,
    Environment,
    Plan,
    ProcessFlow,
    Subscription,
)
from tests.accounts.factories import OrganisationFactory

PERIOD_START = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def plan(code: str) -> Plan:
    """A plan of the seeded catalogue (subscriptions/migrations/0002_seed_plans)."""
    return Plan.objects.get(code=code)


class SubscriptionFactory(factory.django.DjangoModelFactory):
    """An active Standard monthly USD subscription whose period started on PERIOD_START."""

    class Meta:
        model = Subscription

    organisation = factory.SubFactory(OrganisationFactory)
    plan = factory.LazyFunction(lambda: plan("standard"))
    billing_cycle = BillingCycle.MONTHLY
    status = Subscription.Status.ACTIVE
    currency = "USD"
    anchor_at = PERIOD_START
    current_period_start = factory.SelfAttribute("anchor_at")
    current_period_end = factory.LazyAttribute(
        lambda o: (
            o.anchor_at
            + (
                relativedelta(years=1)
                if o.billing_cycle == BillingCycle.ANNUAL
                else relativedelta(months=1)
            )
        )
    )
    current_price = factory.LazyAttribute(
        lambda o: o.plan.price_for(o.currency).amount_for(o.billing_cycle)
    )
    activated_at = factory.SelfAttribute("anchor_at")


class EnvironmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Environment

    organisation = factory.SubFactory(OrganisationFactory)
    name = factory.Sequence(lambda n: f"Environment {n}")


class ConnectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Connection

    environment = factory.SubFactory(EnvironmentFactory)
    organisation = factory.SelfAttribute("environment.organisation")
    name = factory.Sequence(lambda n: f"Connection {n}")
    application = "Salesforce"


class ProcessFlowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProcessFlow

    environment = factory.SubFactory(EnvironmentFactory)
    organisation = factory.SelfAttribute("environment.organisation")
    name = factory.Sequence(lambda n: f"ProcessFlow {n}")
    status = ProcessFlow.Status.ACTIVE
    pause_reason = ""

    @classmethod
    def _adjust_kwargs(cls, **kwargs):
        """`paused="user"` (or another pause reason) makes a paused flow."""
        reason = kwargs.pop("paused", None)
        if reason:
            kwargs.update(
                status=ProcessFlow.Status.PAUSED, pause_reason=reason, paused_at=PERIOD_START
            )
        return kwargs
