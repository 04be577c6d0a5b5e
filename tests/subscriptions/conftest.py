import pytest

from tests.subscriptions.factories import EnvironmentFactory, SubscriptionFactory, plan


@pytest.fixture
def subscription(org):
    """`org` on an active Standard monthly subscription (1 environment, 3 integrations, 10
    active ProcessFlows)."""
    return SubscriptionFactory(organisation=org)


@pytest.fixture
def professional(org):
    return SubscriptionFactory(organisation=org, plan=plan("professional"))


@pytest.fixture
def production(org):
    return EnvironmentFactory(organisation=org, name="Production")
