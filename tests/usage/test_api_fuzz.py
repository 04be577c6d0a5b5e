"""Fuzzing the machine API: schemathesis against the OpenAPI document it serves.

Every operation of /api/v1/openapi.json gets schema-valid and schema-invalid requests with a
real key: no 5xx, every answer as documented (status, content type, body schema), every 4xx a
JSON `{"error": "..."}`, invalid data refused. Then the same without a key or with a wrong one:
401 (or 405 for a method the operation does not have), JSON too.

The document is fetched through the WSGI application in-process (`from_wsgi`), so requests run
on the test's database connection inside its transaction: the organisation, flow and key the
fixture creates are visible, and everything the fuzzer stores is rolled back. (`live_server`
would need committed data, a flush per test and a server thread; schemathesis's
`from_fixture` cannot be used with pytest 9, whose test nodes lost the `_nodeid` it reads.)
Loading the document needs no database, so it happens at import, as schemathesis expects.

Bounded and repeatable: `derandomize=True`, no example database and no constants taken from
the code, so each run sends the same requests: about 410 with the key (schemathesis's coverage
cases, boundary values and methods the operations lack, plus 250 generated ones per operation)
and 33 without, some 20 seconds on two cores. synced_at values are moved into the accepted
window relative to now, which changes the instants but not the outcome.
"""

import hashlib
import json
import re
from datetime import timedelta
from uuid import UUID

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from accounts.audit import Actor
from subscriptions.models import Plan
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.models import SyncInfo
from usage.services import api_key_create

pytestmark = pytest.mark.django_db

FLOW_ID = UUID("5b0c8c1e-2f0b-4b7e-9a53-0e6f1f3b9a11")
UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
# RFC 3339 date-time, which is what the document's "format": "date-time" means.
DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII
)

CONFIG = schemathesis.Config.from_dict(
    {
        # Keys are sent by the tests themselves (with_a_valid_key, without_a_valid_key), so
        # negative cases spend themselves on the parameters and the body.
        "generation": {"mode": "all", "with-security-parameters": False},
        # The key is a test key: show failures as they were sent.
        "output": {"sanitization": {"enabled": False}},
        # Not seeded with string constants found in the application's modules: a change
        # anywhere in the code would change the requests sent here.
        "analysis": {"constants": {"enabled": False}},
        "checks": {
            # Refusals the document describes: too many records is 413, a reused key 409.
            "negative_data_rejection": {"expected-statuses": [400, 401, 405, 409, 413, 415]},
        },
    }
)
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", WSGIHandler(), config=CONFIG)

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def json_error_body(ctx, response, case):
    """Every 4xx is JSON {"error": "a sentence"}
    (docs/architecture.md#decision-bad-input-gets-one-readable-line-and-changes-nothing)."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0].strip() == "application/json", (
        f"{response.status_code} answered with Content-Type {content_type!r}"
    )
    body = response.json()
    assert isinstance(body, dict), f"{response.status_code} body is not an object: {body!r}"
    assert isinstance(body.get("error"), str), f"{response.status_code} without error: {body!r}"
    assert body["error"].strip(), f"{response.status_code} with an empty error"
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    missing_required_header,
    unsupported_method,
    json_error_body,
]


@pytest.fixture
def wsgi_requests():
    """Let the WSGI handler run inside the test's transaction, as Django's test client does.

    Its request_started/finished signals close "old" connections, and the test's connection,
    inside an atomic block, looks like one: it would be closed mid-test.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def plain_key(org, admin, wsgi_requests, settings):
    """A live key of an organisation with a subscription and one flow, FLOW_ID."""
    # A few hundred requests a test: whether they cross a minute boundary must not matter.
    # The limit itself is tested in test_api.py.
    settings.API_RATE_LIMIT = "100000/m"
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    environment = EnvironmentFactory(organisation=org, name="Production")
    ProcessFlowFactory(organisation=org, environment=environment, public_id=FLOW_ID)
    _, plain = api_key_create(
        environment=environment, actor=Actor(user=admin), name="fuzz", now=timezone.now()
    )
    return plain


def make_acceptable(case):
    """Point records at the key's flow and a recent day.

    The document cannot say which flow ids exist or which days are recent, so generated
    records would all be refused for those two reasons; with them fixed, everything else the
    generator varies (keys, messages, snapshots, odd unicode, time formats, the one invalid
    part of a negative case) reaches validation and storage, and a schema-valid batch that is
    refused means the document and the API disagree. Only values of the documented form are
    replaced, so a flow_id or synced_at that a negative case made invalid stays invalid; the
    generated time and offset are kept.
    """
    body = case.body
    if case.operation.path != "/api/v1/sync-info" or not isinstance(body, dict):
        return
    day = (timezone.now() - timedelta(days=2)).date().isoformat()
    records = body.get("records")
    for record in records if isinstance(records, list) else []:
        if not isinstance(record, dict):
            continue
        flow_id, synced_at = record.get("flow_id"), record.get("synced_at")
        if isinstance(flow_id, str) and UUID_TEXT.match(flow_id):
            record["flow_id"] = str(FLOW_ID)
        if isinstance(synced_at, str) and DATE_TIME.match(synced_at):
            record["synced_at"] = day + synced_at[10:]
    if case.meta is None or case.meta.generation.mode.is_negative:
        return
    # A generated key comes back with other bodies (a 409, tested in test_api.py); one per body
    # lets those bodies be checked too, and an identical resend still gets the first answer.
    key = case.headers.get("Idempotency-Key")
    if isinstance(key, str) and key.strip(" \t"):
        digest = hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]
        case.headers["Idempotency-Key"] = key[:100].strip(" \t") + "-" + digest


@schema.parametrize()
@FUZZ
def test_with_a_valid_key(case, plain_key):
    make_acceptable(case)
    case.call_and_validate(headers={"Authorization": f"Bearer {plain_key}"}, checks=CHECKS)


def only_401_or_405(ctx, response, case):
    """Without a valid key: 401 with the Bearer challenge, or 405 for a method not allowed."""
    assert response.status_code in (401, 405), f"{response.status_code} without a valid key"
    if response.status_code == 401:
        assert response.headers.get("www-authenticate") == ['Bearer realm="api"']
    return True


@schema.parametrize()
@settings(FUZZ, max_examples=10, phases=[Phase.generate, Phase.shrink])
@pytest.mark.parametrize("authorization", [None, "Bearer ak_not-a-key", "Basic YTpi"])
def test_without_a_valid_key(case, authorization, plain_key):
    if authorization is not None:
        case.headers = {**(case.headers or {}), "Authorization": authorization}
    case.call_and_validate(
        checks=[
            not_a_server_error,
            response_schema_conformance,
            response_headers_conformance,
            json_error_body,
            only_401_or_405,
        ]
    )
    assert not SyncInfo.objects.exists()
