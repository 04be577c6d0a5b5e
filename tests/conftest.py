import importlib
import os
from datetime import UTC, datetime

import pytest
from django.core.cache import cache
from django.db import connection

from accounts.models import Membership
from core.queueing import broker_failure_forget
from tests.accounts.factories import OrganisationFactory
from tests.helpers import user_with_role
from usage.partitions import TABLES

pytest_plugins = ["tests.stripe_fixtures"]


def pytest_collection_modifyitems(items):
    """Every test that commits (transaction=True, live_server) restores the migrated data first.

    Its teardown empties the tables. A flush without a reload runs post_migrate, which makes
    content types, permissions and the staff groups again under new ids; a later test that
    reloads the serialized data then collides with them. So all of them reload, and any order
    works.
    """
    for item in items:
        marker = item.get_closest_marker("django_db")
        kwargs = dict(marker.kwargs) if marker else {}
        commits = kwargs.get("transaction") or (
            {"transactional_db", "live_server"} & set(item.fixturenames)
        )
        if commits and not kwargs.get("serialized_rollback"):
            kwargs.update(transaction=True, serialized_rollback=True)
            item.add_marker(pytest.mark.django_db(**kwargs), append=False)


def pytest_report_header(config):
    # A run on a moved clock (scripts/test_dates.sh) says which instant it is.
    label = os.environ.get("TEST_CLOCK_LABEL", "the machine's clock")
    return f"clock: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, {label}"


@pytest.fixture(autouse=True)
def _default_catalogue(request):
    """The plans and tax rates that migrations seed, even after a transactional test's flush.

    The reload of the migrated data (above) misses them in browser tests: Playwright's event
    loop runs in the test thread, where Django hands out another connection object, one
    without the serialized data, so nothing is reloaded. The check is one query.
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
def _partitioned_tables_emptied(request):
    """A test that commits leaves the Sync Info and snapshot tables empty, as the flush after it
    leaves every table Django knows: these are partitioned by raw SQL and unknown to the flush."""
    marker = request.node.get_closest_marker("django_db")
    if not (marker and marker.kwargs.get("transaction")):
        yield
        return
    request.getfixturevalue("_django_db_helper")
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(TABLES)}")


@pytest.fixture(autouse=True)
def _broker_not_remembered_down():
    # core.queueing remembers a broker failure for a few seconds per process.
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


@pytest.fixture
def admin(org):
    return user_with_role(org, Membership.Role.ADMIN, "admin@acme.test")


@pytest.fixture
def billing_user(org):
    return user_with_role(org, Membership.Role.BILLING, "billing@acme.test")


@pytest.fixture
def member(org):
    return user_with_role(org, Membership.Role.MEMBER, "member@acme.test")


@pytest.fixture
def outsider(other_org):
    """An Admin of another organisation."""
    return user_with_role(other_org, Membership.Role.ADMIN, "admin@globex.test")


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
