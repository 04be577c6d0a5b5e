import importlib

import pytest
from django.core.cache import cache

from accounts.models import Membership
from billing_portal.queueing import broker_failure_forget
from tests.factories import MembershipFactory, OrganisationFactory, UserFactory

pytest_plugins = ["tests.stripe_fixtures"]


@pytest.fixture(autouse=True)
def _default_catalogue(request):
    """The plans and tax rates that migrations seed, even after a transactional test's flush.

    Tests with database access get them back when an earlier transactional test (browser
    journeys, races) emptied the tables; the check is one query inside the test's transaction.
    """
    if request.node.get_closest_marker("django_db") is None and not (
        {"db", "transactional_db", "live_server"} & set(request.fixturenames)
    ):
        return
    request.getfixturevalue("_django_db_helper")
    from django.apps import apps

    from subscriptions.models import Plan

    if not Plan.objects.exists():
        for module in (
            "subscriptions.migrations.0002_seed_plans",
            "billing.migrations.0002_seed_tax_rates",
        ):
            importlib.import_module(module).seed(apps, None)


@pytest.fixture(autouse=True)
def _broker_not_remembered_down():
    # billing_portal.queueing remembers a broker failure for a few seconds per process.
    broker_failure_forget()
    yield
    broker_failure_forget()


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Rate-limit counters live in (a test database of) the real Redis; start each test clean.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def org(db):
    return OrganisationFactory(name="Acme Trading", slug="acme")


@pytest.fixture
def other_org(db):
    return OrganisationFactory(name="Globex", slug="globex")


def _member(organisation, role, email):
    return MembershipFactory(
        organisation=organisation, role=role, user=UserFactory(email=email)
    ).user


@pytest.fixture
def admin(org):
    return _member(org, Membership.Role.ADMIN, "admin@acme.test")


@pytest.fixture
def billing(org):
    return _member(org, Membership.Role.BILLING, "billing@acme.test")


@pytest.fixture
def member(org):
    return _member(org, Membership.Role.MEMBER, "member@acme.test")


@pytest.fixture
def outsider(other_org):
    """An Admin of another organisation."""
    return _member(other_org, Membership.Role.ADMIN, "admin@globex.test")


@pytest.fixture
def client_for(client):
    def sign_in(user):
        client.force_login(user)
        return client

    return sign_in


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Run on_commit callbacks (email delivery) of the block, as a real commit would."""

    def block():
        return django_capture_on_commit_callbacks(execute=True)

    return block
