"""The machine API: POST /api/v1/sync-info and GET /api/v1/flows."""

import json
import re
import threading
from datetime import timedelta
from datetime import timezone as dt_timezone

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts.audit import Actor
from subscriptions.models import Plan
from tests.helpers import sync_info_post
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.models import IngestBatch, SyncInfo, UsageAlert, UsageCounter
from usage.partitions import partitions_ensure
from usage.services import api_key_create, api_key_revoke, month_usage

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(org, admin):
    subscription = SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    environment = EnvironmentFactory(organisation=org, name="Production")
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    key, plain = api_key_create(
        environment=environment, actor=Actor(user=admin), name="runtime", now=timezone.now()
    )
    return {
        "subscription": subscription,
        "environment": environment,
        "flow": flow,
        "key": key,
        "plain": plain,
    }


def record(flow, n=0, **overrides):
    return {
        "flow_id": str(flow.public_id),
        "record_key": f"order-{n}",
        "status": "success",
        "direction": "outbound",
        "synced_at": timezone.now().isoformat(),
        "message": "ok",
        **overrides,
    }


def post(client, plain, records, key="batch-1", **extra):
    return sync_info_post(client, plain, records, key=key, **extra)


def used(org, subscription):
    from usage.months import usage_month_of

    return month_usage(
        organisation=org, month_start=usage_month_of(subscription, timezone.now())[0]
    )


def test_a_batch_is_stored_and_counted(client, setup, org):
    flow = setup["flow"]
    records = [record(flow, n) for n in range(3)]
    records[1]["snapshot"] = {"order": {"id": 7, "total": "12.50"}}
    response = post(client, setup["plain"], records)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["accepted"] == 3
    assert body["usage"]["used"] == 3
    assert body["usage"]["limit"] == 50_000
    assert SyncInfo.objects.filter(organisation=org).count() == 3
    assert used(org, setup["subscription"]) == 3
    with connection.cursor() as cursor:
        cursor.execute("SELECT payload FROM usage_snapshot")
        [(payload,)] = cursor.fetchall()
    assert json.loads(payload) == {"order": {"id": 7, "total": "12.50"}}
    setup["key"].refresh_from_db()
    assert setup["key"].last_used_at is not None


def stored_tiers() -> dict[str, list[tuple[int, str]]]:
    """(retention_days, partition) of every row, per table, oldest id first."""
    tiers = {}
    with connection.cursor() as cursor:
        for table, key in (("usage_syncinfo", "id"), ("usage_snapshot", "sync_info_id")):
            cursor.execute(
                f"SELECT retention_days, tableoid::regclass::text FROM {table} "  # noqa: S608
                f"ORDER BY {key}"
            )
            # The tier table, or the default partition, a row sits in (not its block).
            tiers[table] = [(days, re.sub(r"_d\d{8}$", "", name)) for days, name in cursor]
    return tiers


def test_rows_are_written_in_the_current_plans_retention_tier(client, setup):
    partitions_ensure(now=timezone.now())
    flow = setup["flow"]
    batch = [record(flow, 0, snapshot={"order": 1}), record(flow, 1)]
    assert post(client, setup["plain"], batch).status_code == 201
    # The renewal that switched the plan: later batches get the new plan's retention.
    subscription = setup["subscription"]
    subscription.plan = Plan.objects.get(code="enterprise")
    subscription.save(update_fields=["plan"])
    batch = [record(flow, 2, snapshot={"order": 2})]
    assert post(client, setup["plain"], batch, key="batch-2").status_code == 201

    # Standard: Sync Info 30 days, snapshots 7; Enterprise: 365 and 90.
    assert stored_tiers() == {
        "usage_syncinfo": [
            (30, "usage_syncinfo_r30"),
            (30, "usage_syncinfo_r30"),
            (365, "usage_syncinfo_r365"),
        ],
        "usage_snapshot": [(7, "usage_snapshot_r7"), (90, "usage_snapshot_r90")],
    }


def test_without_a_subscription_rows_get_the_shortest_retention(client, other_org, admin):
    environment = EnvironmentFactory(organisation=other_org)
    flow = ProcessFlowFactory(organisation=other_org, environment=environment)
    _, plain = api_key_create(
        environment=environment, actor=Actor(user=admin), name="runtime", now=timezone.now()
    )
    response = post(client, plain, [record(flow, 0, snapshot={"order": 1})])
    assert response.status_code == 201
    # Without tier tables yet, the rows wait in the default partitions.
    assert stored_tiers() == {
        "usage_syncinfo": [(30, "usage_syncinfo_default")],
        "usage_snapshot": [(7, "usage_snapshot_default")],
    }


def test_a_resent_batch_is_counted_once_and_answered_the_same(client, setup, org):
    records = [record(setup["flow"], n) for n in range(5)]
    first = post(client, setup["plain"], records)
    again = post(client, setup["plain"], records)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert SyncInfo.objects.count() == 5
    assert used(org, setup["subscription"]) == 5


def test_same_key_with_another_body_is_a_conflict(client, setup):
    post(client, setup["plain"], [record(setup["flow"], 1)])
    response = post(client, setup["plain"], [record(setup["flow"], 2)])
    assert response.status_code == 409
    assert "already used for a different batch" in response.json()["error"]
    assert SyncInfo.objects.count() == 1


def test_an_invalid_record_rejects_the_whole_batch(client, setup):
    flow = setup["flow"]
    records = [
        record(flow, 0),
        record(flow, 1, status="maybe"),
        record(flow, 2, synced_at="yesterday"),
        record(flow, 3, record_key=""),
        "not an object",
    ]
    response = post(client, setup["plain"], records)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [
        (1, "status"),
        (2, "synced_at"),
        (3, "record_key"),
        (4, None),
    ]
    assert SyncInfo.objects.count() == 0
    assert not IngestBatch.objects.exists()
    assert not UsageCounter.objects.exists()


def test_a_flow_of_another_organisation_is_refused(client, setup, other_org):
    theirs = ProcessFlowFactory(
        organisation=other_org, environment=EnvironmentFactory(organisation=other_org)
    )
    response = post(client, setup["plain"], [record(setup["flow"], 0), record(theirs, 1)])
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"index": 1, "field": "flow_id", "message": "Unknown ProcessFlow for this environment."}
    ]
    assert SyncInfo.objects.count() == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"HTTP_AUTHORIZATION": "Bearer ak_nope"}, 401),
        ({"HTTP_AUTHORIZATION": "Basic x"}, 401),
    ],
)
def test_missing_or_unknown_key(client, setup, headers, status):
    response = client.post(
        "/api/v1/sync-info",
        data=json.dumps({"records": [record(setup["flow"])]}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k",
        **headers,
    )
    assert response.status_code == status
    assert "API key" in response.json()["error"]


def test_a_revoked_key_is_refused(client, setup, admin):
    api_key_revoke(key=setup["key"], actor=Actor(user=admin), now=timezone.now())
    response = post(client, setup["plain"], [record(setup["flow"])])
    assert response.status_code == 401
    assert SyncInfo.objects.count() == 0


def test_bad_bodies(client, setup):
    flow = setup["flow"]
    too_many = post(client, setup["plain"], [record(flow, n) for n in range(5001)], key="big")
    assert too_many.status_code == 413
    no_key = post(client, setup["plain"], [record(flow)], key="")
    assert no_key.status_code == 400
    broken = client.post(
        "/api/v1/sync-info",
        data="{not json",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {setup['plain']}",
        HTTP_IDEMPOTENCY_KEY="broken",
    )
    assert (broken.status_code, broken.json()["error"]) == (400, "The body is not valid JSON.")
    huge = client.post(
        "/api/v1/sync-info",
        data="x",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {setup['plain']}",
        HTTP_IDEMPOTENCY_KEY="huge",
        CONTENT_LENGTH=str(20 * 1024 * 1024),
    )
    assert huge.status_code == 413
    assert SyncInfo.objects.count() == 0


def test_usage_figure_equals_the_rows_stored(client, setup, org):
    flow = setup["flow"]
    for batch in range(4):
        post(client, setup["plain"], [record(flow, n) for n in range(25)], key=f"b{batch}")
    assert (
        used(org, setup["subscription"]) == SyncInfo.objects.filter(organisation=org).count() == 100
    )


def test_alerts_at_80_and_100_percent_once_each(client, setup, org, committed):
    Plan.objects.filter(code="standard").update(monthly_transactions=10)
    flow = setup["flow"]
    with committed():
        post(client, setup["plain"], [record(flow, n) for n in range(7)], key="a")
        post(client, setup["plain"], [record(flow, n) for n in range(1)], key="b")  # 80%
        post(client, setup["plain"], [record(flow, n) for n in range(1)], key="c")
        post(client, setup["plain"], [record(flow, n) for n in range(5)], key="d")  # 140%
    alerts = [m.subject for m in mail.outbox if "monthly transactions" in m.subject]
    recipients = 2  # the primary email and the Admin
    assert sum("80%" in s for s in alerts) == recipients
    assert sum("100%" in s for s in alerts) == recipients
    assert UsageAlert.objects.count() == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_concurrent_batches_crossing_80_percent_send_one_alert(client):
    from tests.accounts.factories import MembershipFactory, OrganisationFactory

    org = OrganisationFactory()
    admin = MembershipFactory(organisation=org, role="admin").user
    Plan.objects.filter(code="standard").update(monthly_transactions=100)
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    environment = EnvironmentFactory(organisation=org)
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    _, plain = api_key_create(
        environment=environment, actor=Actor(user=admin), name="k", now=timezone.now()
    )

    post(Client(), plain, [record(flow, n) for n in range(70)], key="warm")
    barrier = threading.Barrier(2)
    codes = []

    def send(name):
        try:
            barrier.wait()
            codes.append(
                post(Client(), plain, [record(flow, n) for n in range(10)], key=name).status_code
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(f"t{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [201, 201]
    assert UsageAlert.objects.filter(organisation=org, threshold=80).count() == 1
    assert SyncInfo.objects.filter(organisation=org).count() == 90


def test_flows_lists_the_environments_flows_and_whether_they_may_run(client, setup, org):
    paused = ProcessFlowFactory(
        organisation=org, environment=setup["environment"], status="paused", pause_reason="user"
    )
    ProcessFlowFactory(
        organisation=org, environment=EnvironmentFactory(organisation=org, name="Test")
    )
    response = client.get("/api/v1/flows", HTTP_AUTHORIZATION=f"Bearer {setup['plain']}")
    assert response.status_code == 200
    flows = {f["id"]: f for f in response.json()["flows"]}
    assert set(flows) == {str(setup["flow"].public_id), str(paused.public_id)}
    assert flows[str(setup["flow"].public_id)]["may_run"] is True
    assert flows[str(paused.public_id)]["may_run"] is False
    setup["subscription"].status = "suspended"
    setup["subscription"].save()
    response = client.get("/api/v1/flows", HTTP_AUTHORIZATION=f"Bearer {setup['plain']}")
    assert not any(f["may_run"] for f in response.json()["flows"])
    assert client.get("/api/v1/flows").status_code == 401


def test_the_openapi_document_describes_both_endpoints(client, db):
    document = client.get("/api/v1/openapi.json").json()
    assert set(document["paths"]) == {"/api/v1/sync-info", "/api/v1/flows"}
    assert document["openapi"].startswith("3.")


def test_records_in_the_past_count_in_their_usage_month(client, setup, org):
    from usage.months import usage_month_of

    subscription = setup["subscription"]
    subscription.anchor_at = timezone.now() - timedelta(days=75)
    subscription.save(update_fields=["anchor_at"])
    current = usage_month_of(subscription, timezone.now())[0]
    earlier = current - timedelta(hours=1)
    post(client, setup["plain"], [record(setup["flow"], synced_at=earlier.isoformat())])
    assert used(org, subscription) == 0
    previous = usage_month_of(subscription, earlier)[0]
    assert previous < current
    assert month_usage(organisation=org, month_start=previous) == 1


# Found by fuzzing (tests/usage/test_api_fuzz.py) or while fixing what it found -------------


def raw_post(client, plain, body: bytes | str, key="raw", **extra):
    return client.post(
        "/api/v1/sync-info",
        data=body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {plain}",
        HTTP_IDEMPOTENCY_KEY=key,
        **extra,
    )


def assert_nothing_stored():
    assert SyncInfo.objects.count() == 0
    assert not IngestBatch.objects.exists()
    assert not UsageCounter.objects.exists()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("get", "/api/v1/sync-info", "POST"),
        ("put", "/api/v1/sync-info", "POST"),
        ("trace", "/api/v1/sync-info", "POST"),
        ("post", "/api/v1/flows", "GET"),
        ("delete", "/api/v1/flows", "GET"),
        ("post", "/api/v1/openapi.json", "GET"),
    ],
)
def test_a_method_not_allowed_is_a_json_405(setup, method, path, allow):
    # Was an empty text/html 405 (require_GET), and for POST /api/v1/flows Django's CSRF page
    # (403, HTML): the API is authenticated by its key, not a cookie.
    client = Client(enforce_csrf_checks=True)
    response = getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {setup['plain']}")
    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert response["Allow"] == allow
    assert response.json() == {"error": f"{method.upper()} is not allowed here; use {allow}."}


def test_a_utc_offset_postgres_cannot_hold_is_stored_in_utc(client, setup):
    # Python accepts offsets up to 23:59, Postgres up to 15:59: was a 500 from COPY.
    moment = (timezone.now() - timedelta(days=2)).replace(microsecond=0)
    far_east = moment.astimezone(dt_timezone(timedelta(hours=22, minutes=21)))
    response = post(client, setup["plain"], [record(setup["flow"], synced_at=far_east.isoformat())])
    assert response.status_code == 201, response.content
    assert SyncInfo.objects.get().synced_at == moment


def test_record_keys_are_trimmed_of_ascii_spaces_and_cannot_be_only_spaces(client, setup):
    # The document says what the API does: before, " " was valid by the document and refused,
    # and Unicode spaces were trimmed by Python's rules, which JSON Schema patterns do not share.
    flow = setup["flow"]
    refused = post(client, setup["plain"], [record(flow, record_key=" \t\n ")], key="spaces")
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        {
            "index": 0,
            "field": "record_key",
            "message": "A record key of 1 to 255 characters is required.",
        }
    ]
    assert_nothing_stored()
    batch = [record(flow, record_key="  SO-1\t"), record(flow, record_key="\u2003")]
    assert post(client, setup["plain"], batch, key="trimmed").status_code == 201
    assert sorted(SyncInfo.objects.values_list("record_key", flat=True)) == ["SO-1", "\u2003"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("record_key", "SO-\x001"),
        ("message", "a\x00b"),
        ("snapshot", {"order\x00": 1}),
        ("snapshot", {"order": ["ok", "a\x00b"]}),
        ("record_key", "\ud800"),
        ("message", "x\udfffx"),
        ("snapshot", {"\udbff": 1}),
    ],
)
def test_text_postgres_cannot_store_is_refused(client, setup, field, value):
    # NUL and unpaired surrogates (JSON allows "\u0000" and "\ud800"): were a 500 from COPY.
    response = post(client, setup["plain"], [record(setup["flow"], **{field: value})])
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {
            "index": 0,
            "field": field,
            "message": "Text cannot contain NUL characters or unpaired surrogates.",
        }
    ]
    assert_nothing_stored()


def test_a_surrogate_sent_as_raw_bytes_is_refused(client, setup):
    # json.loads decodes bytes with "surrogatepass": UTF-8-encoded surrogates get through too.
    body = json.dumps({"records": [record(setup["flow"], message="MARK")]}).encode()
    response = raw_post(client, setup["plain"], body.replace(b"MARK", b"\xed\xa0\x80"))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "message"
    assert_nothing_stored()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_snapshot_number_json_cannot_hold_is_refused(client, setup, number):
    # Python reads them (1e400 as infinity); jsonb refuses them: COPY failed, a 500.
    body = json.dumps({"records": [record(setup["flow"], snapshot={"total": ["MARK"]})]})
    response = raw_post(client, setup["plain"], body.replace('"MARK"', number))
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {
            "index": 0,
            "field": "snapshot",
            "message": "A snapshot cannot hold NaN or Infinity (nor a number as large as 1e400).",
        }
    ]
    assert_nothing_stored()


def test_an_integer_of_too_many_digits_is_refused(client, setup):
    # Python refuses to read an integer of over 4,300 digits: a ValueError, a 500.
    body = json.dumps({"records": [record(setup["flow"], snapshot={"total": "MARK"})]})
    response = raw_post(client, setup["plain"], body.replace('"MARK"', "9" * 5000))
    assert (response.status_code, response.json()) == (
        400,
        {"error": "The body has a number with too many digits."},
    )
    assert_nothing_stored()


def test_a_body_nested_too_deeply_is_refused(client, setup):
    # Was a RecursionError from json.loads: a 500.
    response = raw_post(client, setup["plain"], "[" * 100_000)
    assert (response.status_code, response.json()) == (
        400,
        {"error": "The body is nested too deeply."},
    )
    assert_nothing_stored()


@pytest.mark.parametrize("key", ["a\x00b", "a\x01b", "a\tb", "\x7f"])
def test_an_idempotency_key_with_control_characters_is_refused(client, setup, key):
    # A NUL was a 500 from Postgres; the document now says what a key may hold.
    response = post(client, setup["plain"], [record(setup["flow"])], key=key)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]
    assert_nothing_stored()


def test_spaces_around_an_idempotency_key_are_not_part_of_it(client, setup):
    records = [record(setup["flow"])]
    first = post(client, setup["plain"], records, key="batch-7")
    again = post(client, setup["plain"], records, key=" batch-7\t")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert SyncInfo.objects.count() == 1


def test_each_key_has_a_rate_limit(client, setup, settings, admin):
    settings.API_RATE_LIMIT = "3/m"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {setup['plain']}"}
    assert [client.get("/api/v1/flows", **auth).status_code for _ in range(3)] == [200] * 3
    refused = post(client, setup["plain"], [record(setup["flow"])])
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused.json() == {
        "error": f"Too many requests with this key; try again in {refused['Retry-After']} seconds."
    }
    assert_nothing_stored()
    # Per key: another key of the same environment is not held back.
    _, other = api_key_create(
        environment=setup["environment"], actor=Actor(user=admin), name="b", now=timezone.now()
    )
    assert client.get("/api/v1/flows", HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 200


def test_the_openapi_document_describes_every_error_with_the_error_schema(client, db):
    document = client.get("/api/v1/openapi.json").json()
    operations = {
        (path, method): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert {key: sorted(op["responses"]) for key, op in operations.items()} == {
        ("/api/v1/sync-info", "post"): ["201", "400", "401", "409", "413", "415", "429"],
        ("/api/v1/flows", "get"): ["200", "401", "429"],
    }
    for operation in operations.values():
        for status, response in operation["responses"].items():
            if status.startswith("4"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}
        assert operation["responses"]["429"]["headers"]["Retry-After"]["required"] is True


def test_requests_with_wrong_keys_are_limited_per_client_address(client, setup, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "api_auth_failed": "3/m"}
    wrong = {"HTTP_AUTHORIZATION": "Bearer ak_guessed"}
    assert [client.get("/api/v1/flows", **wrong).status_code for _ in range(3)] == [401] * 3
    refused = client.get("/api/v1/flows", **wrong)
    assert refused.status_code == 429
    assert refused.json()["error"].startswith("Too many requests with invalid API keys")
    assert 1 <= int(refused["Retry-After"]) <= 60
    # Refused before the key is even looked at: a right key from that address waits too.
    right = client.get("/api/v1/flows", HTTP_AUTHORIZATION=f"Bearer {setup['plain']}")
    assert right.status_code == 429
    # Another address is not held back.
    other = client.get(
        "/api/v1/flows", HTTP_AUTHORIZATION=f"Bearer {setup['plain']}", REMOTE_ADDR="10.0.0.9"
    )
    assert other.status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/flows/", "/api/v2/sync-info"])
@pytest.mark.parametrize("method", ["get", "post"])
def test_unknown_api_paths_answer_a_json_404(client, db, path, method):
    response = getattr(client, method)(path, content_type="application/json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": "No such API endpoint; the API is described at /api/v1/openapi.json."
    }
