"""The ingest hot path (usage.services._validate_plain): it takes only batches the full check
accepts, reads them exactly as it does, and a batch costs the same few queries however many
records it holds."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.audit import Actor
from subscriptions.models import Plan
from tests.helpers import sync_info_post
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.partitions import partitions_ensure
from usage.services import _parse_records, _validate, _validate_plain, api_key_create

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
FLOW = "6f1c1d2e-8a4b-4c3d-9e2f-0a1b2c3d4e5f"
FLOWS = {FLOW: 7}


def plain_record(**overrides):
    return {
        "flow_id": FLOW,
        "record_key": "SO-1",
        "status": "success",
        "direction": "inbound",
        "synced_at": (NOW - timedelta(hours=3)).isoformat(),
        "message": "",
        **overrides,
    }


def full_check(body: bytes):
    """What the full check makes of `body`: its rows, or None when it refuses the batch."""
    records = _parse_records(body)
    if not isinstance(records, list):
        return None
    rows, errors = _validate(records, flows=FLOWS, now=NOW)
    return None if errors else rows


def body_of(*records, **top) -> bytes:
    return json.dumps({"records": list(records), **top}).encode()


@pytest.mark.parametrize(
    "body",
    [
        body_of(plain_record()),
        body_of(plain_record(record_key="  SO-1\t", message=None)),
        body_of({k: v for k, v in plain_record().items() if k != "message"}),
        body_of(plain_record(synced_at="2026-03-10T01:02:03+22:21")),
        body_of(plain_record(message="x" * 500, record_key="k" * 255)),
        body_of(plain_record(record_key="\u2003", message="\U0001f600 caf\u00e9")),
        b'{"records": [{"flow_id": "%s", "record_key": "a", "record_key": "b", "status": '
        b'"failed", "direction": "outbound", "synced_at": "2026-03-09T00:00:00Z"}]}'
        % FLOW.encode(),
    ],
)
def test_a_plainly_valid_batch_is_read_as_the_full_check_reads_it(body):
    rows = _validate_plain(body, flows=FLOWS, now=NOW)
    assert rows is not None
    assert rows == full_check(body)


@pytest.mark.parametrize(
    "body",
    [
        # Refused by the full check: the fast path must leave each to it.
        body_of(plain_record(record_key=" \t")),
        body_of(plain_record(record_key="k" * 256)),
        body_of(plain_record(message="x" * 501)),
        body_of(plain_record(status="ok")),
        body_of(plain_record(direction=None)),
        body_of(plain_record(synced_at="2026-03-09T00:00:00")),
        body_of(plain_record(synced_at="2024-01-01T00:00:00+00:00")),
        body_of(plain_record(synced_at="2026-03-12T00:00:00+00:00")),
        body_of(plain_record(flow_id="00000000-0000-0000-0000-000000000000")),
        body_of(plain_record(record_key="SO-\x001")),
        body_of(plain_record(message="x\udfffx")),
        body_of(plain_record(message=5)),
        body_of(),
        body_of(*[plain_record()] * 5001),
        body_of(plain_record(), also=[9] * 3).replace(b"9,", b"9" * 5000 + b",", 1),
        body_of(plain_record(), deep="MARK").replace(b'"MARK"', b"[" * 5000 + b"]" * 5000),
        body_of(plain_record(message="MARK")).replace(b"MARK", b"\xed\xa0\x80"),
        body_of(plain_record(message="MARK")).replace(b'"MARK"', b"NaN"),
        b"\xef\xbb\xbf" + body_of(plain_record()),
        body_of(plain_record()) + b"{}",
        b"{not json",
        # Accepted by the full check, but not plain: left to it all the same.
        body_of(plain_record(flow_id=FLOW.upper())),
        body_of(plain_record(snapshot={"order": 1})),
        body_of(plain_record(extra="ignored")),
        body_of(plain_record(), note="ignored"),
    ],
)
def test_anything_not_plain_is_left_to_the_full_check(body):
    assert _validate_plain(body, flows=FLOWS, now=NOW) is None


text = st.text(st.characters(codec="utf-8") | st.sampled_from(" \t\x00\u2003"), max_size=260)
records = st.fixed_dictionaries(
    {
        "flow_id": st.sampled_from([FLOW, FLOW.upper(), "nope"]),
        "record_key": text,
        "status": st.sampled_from(["success", "failed", "SUCCESS"]),
        "direction": st.sampled_from(["inbound", "outbound"]),
        "synced_at": st.datetimes(
            min_value=datetime(2024, 12, 1), max_value=datetime(2026, 3, 12)
        ).map(lambda moment: moment.replace(tzinfo=UTC).isoformat()),
    },
    optional={"message": st.none() | text},
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, min_size=1, max_size=5))
def test_the_fast_path_never_differs_from_the_full_check(batch):
    body = body_of(*batch)
    rows = _validate_plain(body, flows=FLOWS, now=NOW)
    assert rows is None or rows == full_check(body)


@pytest.mark.django_db
def test_a_batch_costs_the_same_queries_however_many_records(client, org, admin, time_machine):
    # Inside the factory subscription's usage month, on a clock the test fixes.
    now = datetime(2026, 11, 12, 14, 0, tzinfo=UTC)
    time_machine.move_to(now, tick=False)
    partitions_ensure(now=now)
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    environment = EnvironmentFactory(organisation=org, name="Production")
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    _, plain = api_key_create(
        environment=environment, actor=Actor(user=admin), name="runtime", now=now
    )

    def queries(count: int, key: str) -> int:
        batch = [
            plain_record(
                flow_id=str(flow.public_id),
                record_key=f"SO-{n}",
                synced_at=(now - timedelta(minutes=n)).isoformat(),
            )
            for n in range(count)
        ]
        with CaptureQueriesContext(connection) as captured:
            response = sync_info_post(client, plain, batch, key=key)
        assert response.status_code == 201, response.content
        return len(captured)

    queries(1, "warm")  # the key's last-used time is written at most once a minute
    # Authentication, the idempotency key and flows, the batch row, the subscription, the
    # COPY, the counters, the month's usage, the batch's answer (and the savepoint's two).
    assert queries(1, "one") == queries(1000, "thousand") <= 10
