"""Sync Info page: filters, keyset pagination, constant queries."""

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from subscriptions.models import Plan, Subscription
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.models import SyncInfo
from usage.partitions import (
    SYNC_INFO_TABLE,
    block_name,
    block_width,
    catalogue_tiers,
    ingest_retention,
    partitions_ensure,
    tier_blocks,
)
from usage.selectors import cursor_encode
from usage.services import NEWEST
from usage.views import STALE_CURSOR

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
# The rows here are stored at fixed instants around T0: the clock stands a week after it.
NOW = datetime(2026, 11, 27, 13, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def now(time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


def tier(flow) -> int:
    """The retention tier the ingest writes for the flow's organisation."""
    subscription = Subscription.objects.filter(organisation_id=flow.organisation_id).first()
    return ingest_retention(subscription).days("usage_syncinfo")


def insert_rows(flow, rows):
    """Sync Info rows for `flow`: dicts with synced_at and optionally the other columns."""
    with connection.cursor() as cursor:
        for n, row in enumerate(rows):
            cursor.execute(
                "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
                "record_key, status, direction, synced_at, message, retention_days) "
                "VALUES (%s, %s, %s, 0, %s, %s, %s, %s, %s, %s)",
                [
                    flow.organisation_id,
                    flow.environment_id,
                    flow.pk,
                    row.get("record_key", f"rec-{n}"),
                    row.get("status", "success"),
                    row.get("direction", "outbound"),
                    row["synced_at"],
                    row.get("message", "ok"),
                    row.get("retention_days", tier(flow)),
                ],
            )


def insert_series(flow, count, *, newest=T0, step=timedelta(seconds=1), same_every=1):
    """`count` rows, newest at `newest`, going back one `step` per `same_every` rows (so
    `same_every` > 1 makes rows share synced_at). Record keys are rec-1 ... rec-<count>."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at, message, retention_days) "
            "SELECT %s, %s, %s, 0, 'rec-' || g, "
            "CASE WHEN g %% 10 = 0 THEN 'failed' ELSE 'success' END, 'outbound', "
            "%s - ((g - 1) / %s) * %s, 'message ' || g, %s FROM generate_series(1, %s) g",
            [
                flow.organisation_id,
                flow.environment_id,
                flow.pk,
                newest,
                same_every,
                step,
                tier(flow),
                count,
            ],
        )


@pytest.fixture
def flow(org):
    environment = EnvironmentFactory(organisation=org, name="Production")
    return ProcessFlowFactory(organisation=org, environment=environment, name="Orders to SAP")


def url(org, **params):
    from urllib.parse import urlencode

    return f"/o/{org.slug}/sync-info/" + (f"?{urlencode(params)}" if params else "")


def record_keys(response) -> list[str]:
    return re.findall(r'<code class="record-key">([^<]+)</code>', response.content.decode())


def older_link(response) -> str | None:
    match = re.search(r'href="(\?[^"]*before=[^"]+)" rel="next"', response.content.decode())
    return match.group(1).replace("&amp;", "&") if match else None


def newer_link(response) -> str | None:
    match = re.search(r'href="(\?[^"]*after=[^"]+)" rel="prev"', response.content.decode())
    return match.group(1).replace("&amp;", "&") if match else None


def test_a_member_sees_rows_newest_first_in_the_organisation_zone(client_for, org, member, flow):
    org.time_zone = "Europe/Berlin"
    org.save(update_fields=["time_zone"])
    insert_rows(
        flow,
        [
            {"record_key": "SO-1", "synced_at": T0, "message": "Created order 1"},
            {
                "record_key": "SO-2",
                "synced_at": T0 + timedelta(minutes=5),
                "status": "failed",
                "direction": "inbound",
                "message": "Customer <b>missing</b>",
            },
        ],
    )
    response = client_for(member).get(url(org))
    assert response.status_code == 200
    html = response.content.decode()
    assert record_keys(response) == ["SO-2", "SO-1"]
    assert "20 Nov 2026, 10:05:00" in html  # 09:05 UTC in Berlin
    assert "20 Nov 2026, 10:00:00" in html
    assert "Orders to SAP" in html
    assert "Production" in html
    assert '<span class="badge badge--err">Failed</span>' in html
    assert '<span class="badge badge--ok">Success</span>' in html
    assert "Inbound" in html
    assert "Customer &lt;b&gt;missing&lt;/b&gt;" in html
    assert "Times in Europe/Berlin." in html
    assert f'href="/o/{org.slug}/sync-info/" aria-current="page">Sync Info</a>' in html


def test_the_empty_state_says_what_will_appear(client_for, org, admin, flow):
    html = client_for(admin).get(url(org)).content.decode()
    assert "No Sync Info yet." in html
    assert "API key" in html


def test_another_organisations_rows_never_show(client_for, org, member, flow, other_org):
    theirs = ProcessFlowFactory(organisation=other_org, environment__organisation=other_org)
    insert_rows(theirs, [{"record_key": "THEIRS", "synced_at": T0}])
    insert_rows(flow, [{"record_key": "OURS", "synced_at": T0}])
    assert record_keys(client_for(member).get(url(org))) == ["OURS"]


def test_filter_by_flow_status_and_days_in_the_organisation_zone(client_for, org, member, flow):
    org.time_zone = "Europe/Berlin"
    org.save(update_fields=["time_zone"])
    other_flow = ProcessFlowFactory(organisation=org, environment=flow.environment, name="B")
    insert_rows(
        flow,
        [
            # 19 Nov 23:30 UTC is 20 Nov 00:30 in Berlin: inside 20 Nov.
            {"record_key": "early", "synced_at": datetime(2026, 11, 19, 23, 30, tzinfo=UTC)},
            # 19 Nov 22:59 UTC is 19 Nov 23:59 in Berlin: outside.
            {"record_key": "before", "synced_at": datetime(2026, 11, 19, 22, 59, tzinfo=UTC)},
            # 20 Nov 23:00 UTC is 21 Nov 00:00 in Berlin: outside.
            {"record_key": "after", "synced_at": datetime(2026, 11, 20, 23, 0, tzinfo=UTC)},
            {"record_key": "late", "synced_at": datetime(2026, 11, 20, 22, 59, tzinfo=UTC)},
            {"record_key": "bad", "synced_at": T0, "status": "failed"},
        ],
    )
    insert_rows(other_flow, [{"record_key": "other", "synced_at": T0}])
    client = client_for(member)

    days = client.get(url(org, date_from="2026-11-20", date_to="2026-11-20"))
    assert record_keys(days) == ["late", "other", "bad", "early"]
    by_flow = client.get(url(org, flow=str(other_flow.public_id)))
    assert record_keys(by_flow) == ["other"]
    failed = client.get(url(org, status="failed"))
    assert record_keys(failed) == ["bad"]
    both = client.get(url(org, flow=str(flow.public_id), status="success", date_to="2026-11-20"))
    assert record_keys(both) == ["late", "early", "before"]
    none = client.get(url(org, status="failed", date_from="2026-11-21"))
    assert record_keys(none) == []
    assert "No records match these filters." in none.content.decode()
    # The Export link carries the filters over.
    assert (
        f'href="/o/{org.slug}/sync-info/export/?flow={other_flow.public_id}"'
        in by_flow.content.decode()
    )


@pytest.mark.parametrize("value", ["not-a-uuid", "00000000-0000-0000-0000-000000000000", "theirs"])
def test_a_tampered_flow_id_is_a_form_error(client_for, org, member, flow, other_org, value):
    if value == "theirs":
        value = str(ProcessFlowFactory(environment__organisation=other_org).public_id)
    insert_rows(flow, [{"record_key": "OURS", "synced_at": T0}])
    response = client_for(member).get(url(org, flow=value))
    assert response.status_code == 400
    html = response.content.decode()
    assert "Choose one of your organisation&#x27;s ProcessFlows." in html
    assert record_keys(response) == []


def test_an_end_before_the_start_is_a_form_error(client_for, org, member, flow):
    response = client_for(member).get(url(org, date_from="2026-11-20", date_to="2026-11-19"))
    assert response.status_code == 400
    assert "The end date must be on or after the start date." in response.content.decode()


def test_keyset_pages_walk_every_row_once_with_ties_in_synced_at(client_for, org, member, flow):
    # 130 rows, ten at each instant: page boundaries fall inside groups of equal synced_at.
    insert_series(flow, 130, same_every=10)
    expected = list(
        SyncInfo.objects.filter(organisation=org)
        .order_by("-synced_at", "-id")
        .values_list("record_key", flat=True)
    )
    client = client_for(member)
    pages, response = [], client.get(url(org))
    while True:
        pages.append(record_keys(response))
        link = older_link(response)
        if link is None:
            break
        response = client.get(url(org) + link)
        assert response.status_code == 200
    assert [len(page) for page in pages] == [50, 50, 30]
    assert [key for page in pages for key in page] == expected

    # And back: "Newer" from the last page gives the middle page again, then the first.
    middle = client.get(url(org) + newer_link(response))
    assert record_keys(middle) == pages[1]
    first = client.get(url(org) + newer_link(middle))
    assert record_keys(first) == pages[0]
    assert newer_link(first) is None


def test_page_links_keep_the_filters(client_for, org, member, flow):
    insert_series(flow, 120)
    insert_series(flow, 200, newest=T0 - timedelta(days=1))
    client = client_for(member)
    response = client.get(url(org, date_from="2026-11-20"))
    link = older_link(response)
    assert link.startswith("?date_from=2026-11-20&before=")
    second = client.get(url(org) + link)
    assert record_keys(second) == [f"rec-{n}" for n in range(51, 101)]
    third = client.get(url(org) + older_link(second))
    assert record_keys(third) == [f"rec-{n}" for n in range(101, 121)]
    assert older_link(third) is None


@pytest.mark.parametrize("cursor", ["garbage!", "bm90LWEtZGF0ZXwx", "MjAyNi0xMS0yMFQwOTowMDowMHx4"])
def test_an_invalid_cursor_shows_the_first_page_with_a_message(
    client_for, org, member, flow, cursor
):
    insert_series(flow, 60)
    response = client_for(member).get(url(org, before=cursor))
    assert response.status_code == 200
    assert record_keys(response) == [f"rec-{n}" for n in range(1, 51)]
    assert STALE_CURSOR in response.content.decode()


def test_a_cursor_past_the_end_says_there_is_nothing_older(client_for, org, member, flow):
    insert_series(flow, 3)
    oldest = SyncInfo.objects.filter(organisation=org).order_by("synced_at", "id").first()
    response = client_for(member).get(url(org, before=cursor_encode(oldest)))
    assert record_keys(response) == []
    assert "No older records." in response.content.decode()


def test_a_newer_link_with_less_than_a_page_above_shows_the_newest_page(
    client_for, org, member, flow
):
    insert_series(flow, 60)
    tenth = SyncInfo.objects.filter(organisation=org).order_by("-synced_at", "-id")[9]
    response = client_for(member).get(url(org, after=cursor_encode(tenth)))
    assert record_keys(response) == [f"rec-{n}" for n in range(1, 51)]
    assert newer_link(response) is None
    assert older_link(response) is not None


def _queries(client, path) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200
    return [query["sql"] for query in captured.captured_queries]


def test_query_count_is_constant_and_pages_use_neither_offset_nor_count(
    client_for, org, member, flow
):
    client = client_for(member)
    client.get(url(org))  # the first visit stores the organisation in the session
    empty = _queries(client, url(org))
    insert_series(flow, 5_000)
    full = _queries(client, url(org))
    deep = client.get(url(org))
    for _ in range(3):
        deep = client.get(url(org) + older_link(deep))
    assert record_keys(deep)[0] == "rec-151"
    later = _queries(client, url(org) + older_link(deep))
    filtered = _queries(client, url(org, flow=str(flow.public_id), status="failed"))
    assert len(empty) == len(full) == len(later) == len(filtered)
    sync_info_sql = [sql for sql in full + later + filtered if "usage_syncinfo" in sql]
    assert len(sync_info_sql) == 3
    for sql in sync_info_sql:
        assert "OFFSET" not in sql.upper()
        assert "COUNT(" not in sql.upper()
        assert "LIMIT 51" in sql


def test_every_role_may_open_sync_info(client_for, org, admin, billing_user, member, flow):
    for user in (admin, billing_user, member):
        assert client_for(user).get(url(org)).status_code == 200


def test_times_keep_their_seconds_and_offset_across_a_daylight_saving_change(
    client_for, org, member, flow
):
    org.time_zone = "America/New_York"
    org.save(update_fields=["time_zone"])
    insert_rows(
        flow,
        [
            # 1 Nov 2026 05:30:07.25 UTC is 01:30 EDT; an hour later it is 01:30 EST again.
            {"record_key": "edt", "synced_at": datetime(2026, 11, 1, 5, 30, 7, 250000, UTC)},
            {"record_key": "est", "synced_at": datetime(2026, 11, 1, 6, 30, 7, tzinfo=UTC)},
            {"record_key": "day", "synced_at": datetime(2026, 11, 9, 4, 59, 59, tzinfo=UTC)},
        ],
    )
    html = client_for(member).get(url(org)).content.decode()
    assert re.findall(r'<time datetime="([^"]+)">([^<]+)</time>', html) == [
        ("2026-11-08T23:59:59-05:00", "8 Nov 2026, 23:59:59"),
        ("2026-11-01T01:30:07-05:00", "1 Nov 2026, 01:30:07"),
        ("2026-11-01T01:30:07.250000-04:00", "1 Nov 2026, 01:30:07"),
    ]


def test_the_filter_fields_keep_their_labels_values_and_errors(client_for, org, member, flow):
    html = client_for(member).get(url(org)).content.decode()
    assert '<label for="id_flow">ProcessFlow</label>' in html
    assert '<option value="" selected>All ProcessFlows</option>' in html
    assert f'<option value="{flow.public_id}">Orders to SAP · Production</option>' in html
    assert '<label for="id_status">Status</label>' in html
    assert '<option value="" selected>All statuses</option>' in html
    assert '<option value="failed">Failed</option>' in html
    assert '<input type="date" name="date_from" id="id_date_from">' in html
    assert '<input type="date" name="date_to" id="id_date_to">' in html

    chosen = client_for(member).get(
        url(org, flow=str(flow.public_id), status="failed", date_from="2026-11-01")
    )
    html = chosen.content.decode()
    assert f'<option value="{flow.public_id}" selected>Orders to SAP · Production</option>' in html
    assert '<option value="failed" selected>Failed</option>' in html
    assert '<option value="" selected>' not in html
    assert '<input type="date" name="date_from" value="2026-11-01" id="id_date_from">' in html

    wrong = client_for(member).get(url(org, flow="nope", date_from="<b>1</b>"))
    assert wrong.status_code == 400
    html = wrong.content.decode()
    assert (
        '<ul class="errorlist" id="id_flow_error">'
        "<li>Choose one of your organisation&#x27;s ProcessFlows.</li></ul>"
    ) in html
    assert (
        '<select name="flow" aria-invalid="true" aria-describedby="id_flow_error" id="id_flow">'
    ) in html
    assert (
        '<input type="date" name="date_from" value="&lt;b&gt;1&lt;/b&gt;" aria-invalid="true" '
        'aria-describedby="id_date_from_error" id="id_date_from">'
    ) in html
    assert html.count('class="field field--error"') == 2


# Retention window and partition pruning ---------------------------------------------------


@pytest.fixture
def standard(org):
    """`org` on Standard (Sync Info kept 30 days) at NOW, with this week's partitions."""
    partitions_ensure(now=NOW)
    return SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))


def test_rows_past_the_retention_are_not_shown_and_other_tiers_are(
    client_for, org, member, flow, standard
):
    insert_rows(
        flow,
        [
            {"record_key": "expired", "synced_at": NOW - timedelta(days=30, seconds=1)},
            {"record_key": "oldest", "synced_at": NOW - timedelta(days=30)},
            # Ingested under Professional before a downgrade: still within 30 days.
            {"record_key": "before-downgrade", "synced_at": NOW - timedelta(days=3)},
            {"record_key": "tomorrow", "synced_at": NOW + NEWEST},
        ],
    )
    SyncInfo.objects.filter(record_key="before-downgrade").update(retention_days=90)
    html = client_for(member).get(url(org)).content.decode()
    assert record_keys(client_for(member).get(url(org))) == [
        "tomorrow",
        "before-downgrade",
        "oldest",
    ]
    assert "Records are kept 30 days on your Standard plan." in html


def plan_relations(sql: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    found, stack = set(), [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        if "Relation Name" in node:
            found.add(node["Relation Name"])
        stack.extend(node.get("Plans", []))
    return found


def leaves() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relid::regclass::text FROM pg_partition_tree(%s::regclass) WHERE isleaf",
            [SYNC_INFO_TABLE],
        )
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.parametrize(
    "params", [{}, {"status": "failed"}, {"date_from": "2026-11-01", "flow": "FLOW"}]
)
def test_the_page_query_plans_only_the_blocks_within_the_retention_window(
    client_for, org, member, flow, standard, params
):
    insert_series(flow, 60, newest=NOW)
    params = {
        name: str(flow.public_id) if value == "FLOW" else value for name, value in params.items()
    }
    client = client_for(member)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url(org, **params))
    assert response.status_code == 200
    [sql] = [q["sql"] for q in captured.captured_queries if "usage_syncinfo" in q["sql"]]

    # What may hold a row of a Standard organisation: in every tier (after a plan change its
    # older rows stay in their tier), the blocks overlapping [NOW - 30 days, NOW + 1 day];
    # and the top default, which holds the tiers that have no table yet.
    start, end = NOW - timedelta(days=30), NOW + NEWEST
    expected = {"usage_syncinfo_default"}
    for days in catalogue_tiers()[SYNC_INFO_TABLE]:
        for block in tier_blocks(days, now=NOW):
            if block <= end and block + block_width(days) > start:
                expected.add(block_name(SYNC_INFO_TABLE, days, block))
    assert plan_relations(sql) == expected
    # 13 of the 46 leaves with today's catalogue (30, 90 and 365 days): neither the tiers'
    # defaults, nor the longer tiers' blocks before the window, nor the blocks ahead of it.
    assert (len(expected), len(leaves())) == (13, 46)


def test_without_a_subscription_only_the_blocks_ahead_are_left_out(client_for, org, member, flow):
    insert_series(flow, 3, newest=T0)
    client = client_for(member)
    with CaptureQueriesContext(connection) as captured:
        assert record_keys(client.get(url(org))) == ["rec-1", "rec-2", "rec-3"]
    [sql] = [q["sql"] for q in captured.captured_queries if "usage_syncinfo" in q["sql"]]
    assert "usage_syncinfo.synced_at <= " in sql.replace('"', "")
    assert ">=" not in sql.split("WHERE", 1)[1].split("ORDER BY")[0]
