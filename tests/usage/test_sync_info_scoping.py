"""Every query on Sync Info, its snapshots and its usage counters names the organisation.

What makes Sync Info fit a distributed PostgreSQL with `organisation_id` as the distribution
column (docs/scaling.md): a statement that pins `organisation_id` runs on one shard. Two
checks keep it so:

- the inventory: every product module that names those tables (by model, table name or
  partition constant) is listed here, either as tenant code, whose statements the journey below
  must run, or as one of the few deliberately cross-organisation jobs, with why. A new module
  that touches Sync Info fails this test until someone decides which it is;
- the journey: one organisation posts batches (with snapshots) and opens every page and export
  that reads them, and the per-organisation billing, ledger and deletion paths run for it. Every
  statement on the tables, COPY included, must pin `organisation_id` to that organisation, and
  every tenant module must have run at least one.
"""

import ast
import re
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from django.urls import reverse

from accounts.audit import Actor
from billing import ledger
from retention.deletion import organisation_data_delete
from retention.models import DeletionRecord
from subscriptions.models import Subscription
from tests.helpers import PRODUCT_APPS, sync_info_post
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.billing import months_usage
from usage.export import sync_info_select
from usage.services import api_key_create

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
TABLES = re.compile(r"\busage_(?:syncinfo|snapshot|usagecounter)\b")
# Taking ids from the table's sequence reads no row (a distributed database hands out ranges).
SEQUENCE = re.compile(r"pg_get_serial_sequence\('usage_\w+', 'id'\)")
MODELS = {"SyncInfo", "UsageCounter"}
PARTITION_CONSTANTS = {"SYNC_INFO_TABLE", "SNAPSHOT_TABLE"}
QUERY_ATTRIBUTES = {"objects", "_default_manager", "_meta"}

# Tenant code: each statement pins one organisation; the journey runs every one of them.
TENANT_MODULES = {
    "usage.services": "ingest: COPY of the batch's rows, the counter upsert, the month's usage",
    "usage.selectors": "the Sync Info page and the Usage section",
    "usage.export": "Sync Info > Export (a COPY of one organisation's rows)",
    "usage.history": "Usage history, a month's days and its CSV",
    "usage.projection": "the projection on the Overview and the Usage section",
    "usage.billing": "a renewal's overage: usage of given (organisation, month) pairs",
    "billing.ledger": "the ledger check of given organisations (the nightly run: see below)",
    "retention.deletion": "an organisation's data deleted for good",
}

# Deliberately across organisations, each with why it stays so on a distributed database.
ACROSS_ORGANISATIONS = {
    "usage.partitions": "DDL: creates the retention tiers' weekly partitions for everyone",
    "retention.purge": "drops and trims partitions past retention: by time, for everyone",
    "billing.invoicing": "the billing run finds every subscription's months over the limit "
    "(counters joined to subscriptions on organisation_id, so colocated)",
    "billing.ledger": "the nightly ledger check covers every organisation",
}

NOW = datetime(2026, 11, 12, 14, 0, tzinfo=UTC)


def _touches(node: ast.AST) -> bool:
    for item in ast.walk(node):
        if isinstance(item, ast.Constant) and isinstance(item.value, str):
            named = bool(TABLES.search(item.value))
        elif isinstance(item, ast.Name):
            named = item.id in PARTITION_CONSTANTS
        elif isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name):
            # A query through the model (its choices and type hints are no query).
            named = item.value.id in MODELS and item.attr in QUERY_ATTRIBUTES
        else:
            named = False
        if named:
            return True
    return False


def modules_touching_sync_info() -> set[str]:
    found = set()
    for app in PRODUCT_APPS:
        for path in (ROOT / app).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if "migrations" in relative.parts or path.name in ("models.py", "admin.py"):
                continue
            if _touches(ast.parse(path.read_text())):
                found.add(".".join(relative.with_suffix("").parts))
    return found


def test_every_module_touching_sync_info_is_accounted_for():
    # models.py declares the tables; admin.py lists no Sync Info (checked below).
    found = modules_touching_sync_info()
    assert found == set(TENANT_MODULES) | set(ACROSS_ORGANISATIONS), (
        "A module touches Sync Info or its counters: add it to TENANT_MODULES (and make the "
        "journey run it) or to ACROSS_ORGANISATIONS with why (docs/scaling.md)."
    )
    for admin in ROOT.glob("*/admin.py"):
        tree = ast.parse(admin.read_text())
        assert not any(
            isinstance(item, ast.Name) and item.id in MODELS for item in ast.walk(tree)
        ), f"{admin.relative_to(ROOT)} lists Sync Info across organisations"


# The journey ------------------------------------------------------------------------------------

ORGANISATION_PREDICATE = re.compile(
    r"""organisation_id"?\s*(?:
        =\s*(?P<one>\d+)\b
      | IN\s*\((?P<many>[\d,\s]+)\)
      | =\s*ANY\s*\(\s*'\{(?P<array>[\d,\s]*)\}'
    )""",
    re.IGNORECASE | re.VERBOSE,
)
INSERT_COLUMNS = re.compile(
    r"^\s*(?:INSERT\s+INTO|COPY)\s+\"?(usage_\w+)\"?\s*\((?P<columns>[^)]*)\)", re.IGNORECASE
)


def pinned_organisations(sql: str) -> set[int]:
    ids = set()
    for match in ORGANISATION_PREDICATE.finditer(sql):
        text = match["one"] or match["many"] or match["array"] or ""
        ids.update(int(value) for value in re.findall(r"\d+", text))
    return ids


def problem(sql: str, organisation_id: int) -> str | None:
    """Why `sql` on Sync Info or its counters is not pinned to `organisation_id`, or None."""
    insert = INSERT_COLUMNS.match(sql)
    if insert and " TO STDOUT" not in sql.upper():
        # Rows written carry the distribution column (COPY's values are checked on the rows).
        columns = [column.strip(' "') for column in insert["columns"].split(",")]
        if "organisation_id" not in columns:
            return "writes rows without organisation_id"
        values = sql[insert.end() :]
        if not sql.lstrip().upper().startswith("COPY") and str(organisation_id) not in values:
            return "writes rows of another organisation"
        return None
    pinned = pinned_organisations(sql)
    if not pinned:
        return "does not filter by organisation_id"
    if pinned != {organisation_id}:
        return f"filters by other organisations too: {sorted(pinned)}"
    return None


def product_frame() -> str:
    """The innermost product module on the stack ("usage.services"), or "". Core runs the
    statements its callers give it (core.csv_copy): the caller is named."""
    for frame in reversed(traceback.extract_stack()):
        relative = Path(frame.filename).resolve()
        if ".venv" in relative.parts or "tests" in relative.parts:
            continue
        try:
            parts = relative.relative_to(ROOT).with_suffix("").parts
        except ValueError:
            continue
        if parts and parts[0] in PRODUCT_APPS and parts[0] != "core":
            return ".".join(parts)
    return ""


class Recorder:
    """Every statement on the tables, with the product module that sent it: the ORM's and raw
    cursors' through Django's execute wrapper, COPY through psycopg's (which Django does not
    see)."""

    def __init__(self):
        self.statements: list[tuple[str, str]] = []

    def __call__(self, execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if TABLES.search(SEQUENCE.sub("", sql)):
            cursor = context["cursor"]
            rendered = cursor.db.ops.last_executed_query(cursor.cursor, sql, params)
            self.statements.append((product_frame(), rendered))
        return result

    def copy_recorded(self, copy):
        recorder = self

        def wrapper(cursor, statement, params=None, **kwargs):
            text = statement if isinstance(statement, str) else statement.as_string(cursor)
            if TABLES.search(text):
                rendered = cursor.mogrify(text, params) if params else text
                recorder.statements.append((product_frame(), rendered))
            return copy(cursor, statement, params, **kwargs)

        return wrapper


@pytest.fixture
def recorder(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(psycopg.Cursor, "copy", recorder.copy_recorded(psycopg.Cursor.copy))
    with connection.execute_wrapper(recorder):
        yield recorder


def tenant(org, admin):
    SubscriptionFactory(organisation=org)
    environment = EnvironmentFactory(organisation=org, name="Production")
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    _, plain = api_key_create(environment=environment, actor=Actor(user=admin), name="rt", now=NOW)
    return flow, plain


def post(client, flow, plain, *, key: str, count: int, snapshot: bool, at: datetime):
    records = [
        {
            "flow_id": str(flow.public_id),
            "record_key": f"{key}-{n}",
            "status": "failed" if n % 3 == 0 else "success",
            "direction": "outbound",
            "synced_at": (at - timedelta(minutes=n)).isoformat(),
            **({"snapshot": {"order": n}} if snapshot else {}),
        }
        for n in range(count)
    ]
    response = sync_info_post(client, plain, records, key=key)
    assert response.status_code in (200, 201), response.content


def test_every_statement_of_one_organisation_pins_it(
    client, time_machine, org, other_org, admin, outsider, recorder
):
    time_machine.move_to(NOW, tick=False)
    flow, plain = tenant(org, admin)
    other_flow, other_plain = tenant(other_org, outsider)
    post(client, other_flow, other_plain, key="other", count=30, snapshot=True, at=NOW)
    recorder.statements.clear()

    # The organisation's runtime posts: plain rows, rows with snapshots, yesterday, a resend.
    post(client, flow, plain, key="a", count=60, snapshot=False, at=NOW)
    post(client, flow, plain, key="b", count=20, snapshot=True, at=NOW - timedelta(days=1))
    post(client, flow, plain, key="b", count=20, snapshot=True, at=NOW - timedelta(days=1))

    client.force_login(admin)
    day = NOW.date().isoformat()
    sync_info = reverse("usage:sync_info", args=[org.slug])
    pages = [
        sync_info,
        f"{sync_info}?flow={flow.public_id}&status=failed&date_from={day}&date_to={day}",
        reverse("usage:sync_info_export", args=[org.slug])
        + f"?export=csv&date_from={day}&date_to={day}",
        reverse("subscriptions:settings", args=[org.slug]),
        reverse("portal:overview", args=[org.slug]),
        reverse("billing:usage_history", args=[org.slug]),
        reverse("billing:usage_history_csv", args=[org.slug]),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        if response.streaming:
            assert b"".join(response.streaming_content), url
    history = client.get(reverse("billing:usage_history", args=[org.slug])).content.decode()
    month = re.search(r'data-month="([^"]+)"', history)[1]
    assert client.get(reverse("billing:usage_month", args=[org.slug, month])).status_code == 200
    older = re.search(r'href="\?[^"]*before=([^"&]+)', client.get(sync_info).content.decode())
    assert older, "the page of older records is linked"
    assert client.get(f"{sync_info}?before={older[1]}").status_code == 200

    months_usage([(org.pk, datetime(2026, 11, 1, 9, tzinfo=UTC))])
    later = NOW + timedelta(days=2)
    assert list(ledger.check_usage_counters(now=later, organisation_ids=[org.pk])) == []
    assert list(ledger.check_overage(now=later, organisation_ids=[org.pk])) == []
    Subscription.objects.filter(organisation=org).update(status=Subscription.Status.ENDED)
    organisation_data_delete(
        organisation=org, kind=DeletionRecord.Kind.GDPR_ORGANISATION, actor=None, now=NOW
    )

    problems = [
        f"{module or '?'}: {reason}\n    {sql[:300]}"
        for module, sql in recorder.statements
        if (reason := problem(sql, org.pk))
    ]
    assert not problems, "\n".join(problems)
    ran = {module for module, _ in recorder.statements}
    assert set(TENANT_MODULES) <= ran, f"not run by the journey: {set(TENANT_MODULES) - ran}"
    assert not ran - set(TENANT_MODULES), f"outside the tenant modules: {ran - set(TENANT_MODULES)}"


def test_the_check_tells_a_pinned_statement_from_one_that_is_not():
    """The check itself, on statements written by hand: the journey's guard can fail."""
    pinned = 'SELECT 1 FROM "usage_syncinfo" WHERE "usage_syncinfo"."organisation_id" = 7'
    assert problem(pinned, 7) is None
    assert problem(pinned, 8) == "filters by other organisations too: [7]"
    assert problem("SELECT count(*) FROM usage_syncinfo WHERE synced_at < now()", 7) == (
        "does not filter by organisation_id"
    )
    assert problem("SELECT 1 FROM usage_usagecounter c WHERE c.organisation_id IN (7, 9)", 7)
    assert problem("SELECT 1 FROM usage_snapshot s WHERE s.organisation_id = ANY('{7}')", 7) is None
    assert problem("COPY usage_syncinfo (environment_id, flow_id) FROM STDIN", 7) == (
        "writes rows without organisation_id"
    )
    assert problem("COPY usage_syncinfo (organisation_id, flow_id) FROM STDIN", 7) is None
    select, params = sync_info_select(organisation_id=7, start=NOW, end=NOW)
    assert "s.organisation_id = %s" in select
    assert params[0] == 7
