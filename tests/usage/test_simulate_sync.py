"""`manage.py simulate_sync` against a live server."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum

from subscriptions.models import Environment, ProcessFlow
from tests.subscriptions.factories import SubscriptionFactory
from usage.models import ApiKey, IngestBatch, SyncInfo, UsageCounter

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def simulate(*args):
    out = StringIO()
    call_command("simulate_sync", *args, stdout=out)
    return out.getvalue()


def test_posts_the_records_in_batches_through_the_api(live_server, org):
    SubscriptionFactory(organisation=org)
    out = simulate(
        "--org",
        org.slug,
        "--records",
        "2500",
        "--batch",
        "1000",
        "--url",
        live_server.url,
        "--days",
        "3",
        "--seed",
        "7",
    )
    assert "Posted 2,500 records in" in out
    assert out.rstrip().endswith("records/s")
    [environment] = Environment.objects.filter(organisation=org)
    flows = ProcessFlow.objects.filter(environment=environment)
    assert sorted(flow.name for flow in flows) == [
        "Customers: Salesforce to SAP Business One",
        "Sales orders: Shopify to SAP Business One",
    ]
    assert SyncInfo.objects.filter(organisation=org).count() == 2500
    assert sorted(IngestBatch.objects.values_list("record_count", flat=True)) == [500, 1000, 1000]
    total = UsageCounter.objects.filter(organisation=org).aggregate(n=Sum("transactions"))["n"]
    assert total == 2500
    statuses = dict(
        SyncInfo.objects.filter(organisation=org)
        .values_list("status")
        .annotate(n=Sum(1))
        .values_list("status", "n")
    )
    assert 0 < statuses["failed"] < 200  # about 3 %
    assert set(SyncInfo.objects.values_list("direction", flat=True)) == {"inbound", "outbound"}
    assert SyncInfo.objects.filter(has_snapshot=True).exists()
    assert SyncInfo.objects.filter(status="failed", message="").count() == 0

    # A second run reuses the environment and flows; its key replaces the first one.
    simulate("--org", org.slug, "--records", "10", "--url", live_server.url)
    assert Environment.objects.filter(organisation=org).count() == 1
    assert ProcessFlow.objects.filter(organisation=org).count() == 2
    keys = ApiKey.objects.filter(organisation=org, name="simulate_sync")
    assert keys.count() == 2
    assert keys.filter(revoked_at__isnull=True).count() == 1
    assert SyncInfo.objects.filter(organisation=org).count() == 2510


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--org", "nope", "--records", "10"], "There is no organisation with the slug 'nope'."),
        (["--org", "acme", "--records", "0"], "--records must be a positive number of records."),
        (["--org", "acme", "--records", "-5"], "--records must be a positive number of records."),
        (["--org", "acme", "--records", "5", "--batch", "6000"], "--batch must be between 1"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(org, args, message):
    with pytest.raises(CommandError) as refused:
        simulate(*args)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    assert Environment.objects.count() == 0
    assert ApiKey.objects.count() == 0
    assert SyncInfo.objects.count() == 0


def test_an_unreachable_server_is_one_line(org):
    SubscriptionFactory(organisation=org)
    with pytest.raises(
        CommandError,
        match=r"^Could not reach http://127.0.0.1:9: \[Errno 111\] Connection refused$",
    ):
        simulate("--org", org.slug, "--records", "5", "--url", "http://127.0.0.1:9")
