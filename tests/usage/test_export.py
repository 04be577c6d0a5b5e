"""Sync Info > Export (article section 12): a streamed CSV of a date range."""

import csv
import io
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.http import StreamingHttpResponse

from tests.subscriptions.factories import EnvironmentFactory, ProcessFlowFactory
from tests.usage.test_sync_info_page import insert_rows, insert_series
from usage import export
from usage.models import SyncInfo

pytestmark = pytest.mark.django_db

HEADER = ["synced_at", "flow", "flow_id", "record_key", "status", "direction", "message"]
TRICKY = 'Customer "ACME, Inc." rejected:\nline 2, with a comma'


@pytest.fixture
def flow(org):
    environment = EnvironmentFactory(organisation=org, name="Production")
    return ProcessFlowFactory(organisation=org, environment=environment, name="Orders, to SAP")


def export_url(org, **params):
    return f"/o/{org.slug}/sync-info/export/?" + urlencode({"export": "csv", **params})


def download(response) -> bytes:
    assert response.status_code == 200, response.content
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content)


def expected_rows(org, start, end, **filters):
    """The stored rows of the range, as the export should write them."""
    rows = (
        SyncInfo.objects.filter(organisation=org, synced_at__gte=start, synced_at__lt=end)
        .filter(**filters)
        .select_related("flow")
        .order_by("synced_at", "id")
    )
    return [
        [
            row.synced_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            row.flow.name,
            str(row.flow.public_id),
            row.record_key,
            row.status,
            row.direction,
            row.message,
        ]
        for row in rows
    ]


def as_csv_module_writes_it(rows) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADER)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def test_the_export_is_exactly_the_stored_rows_of_the_range(client_for, org, member, flow):
    org.time_zone = "America/New_York"
    org.save(update_fields=["time_zone"])
    insert_series(
        flow, 500, newest=datetime(2026, 11, 20, 12, 0, tzinfo=UTC), step=timedelta(minutes=7)
    )
    insert_rows(
        flow,
        [
            {
                "record_key": "tricky",
                "synced_at": datetime(2026, 11, 19, 15, 0, 0, 123456, tzinfo=UTC),
                "message": TRICKY,
                "status": "failed",
                "direction": "inbound",
            },
            {
                "record_key": "no-message",
                "synced_at": datetime(2026, 11, 19, 15, 0, 1, tzinfo=UTC),
                "message": "",
            },
            {
                "record_key": "spaces ",
                "synced_at": datetime(2026, 11, 19, 15, 0, 2, tzinfo=UTC),
                "message": " leading and trailing ",
            },
            {
                "record_key": "unicode",
                "synced_at": datetime(2026, 11, 19, 15, 0, 3, tzinfo=UTC),
                "message": "Grüße, 東京 €",
            },
        ],
    )
    response = client_for(member).get(export_url(org, date_from="2026-11-18", date_to="2026-11-19"))
    body = download(response)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert (
        response["Content-Disposition"]
        == 'attachment; filename="sync-info-2026-11-18-2026-11-19.csv"'
    )
    # Days in New York: 18 Nov 05:00 UTC to 20 Nov 05:00 UTC.
    start = datetime(2026, 11, 18, 5, 0, tzinfo=UTC)
    end = datetime(2026, 11, 20, 5, 0, tzinfo=UTC)
    expected = expected_rows(org, start, end)
    assert len(expected) == 4 + 411  # the series from 18 Nov 05:00 to 20 Nov 05:00 UTC
    parsed = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert parsed[0] == HEADER
    assert parsed[1:] == expected
    # Byte for byte what the csv module writes: CRLF, minimal quoting, quotes doubled.
    assert body == as_csv_module_writes_it(expected)
    assert b'"Customer ""ACME, Inc."" rejected:\nline 2, with a comma"\r\n' in body
    assert b',"Orders, to SAP",' in body
    assert b",no-message,success,outbound,\r\n" in body


def test_the_range_bounds_are_whole_days_in_the_organisation_zone(client_for, org, admin, flow):
    insert_rows(
        flow,
        [
            {
                "record_key": "before",
                "synced_at": datetime(2026, 11, 9, 23, 59, 59, 999999, tzinfo=UTC),
            },
            {"record_key": "first", "synced_at": datetime(2026, 11, 10, 0, 0, tzinfo=UTC)},
            {
                "record_key": "last",
                "synced_at": datetime(2026, 11, 11, 23, 59, 59, 999999, tzinfo=UTC),
            },
            {"record_key": "after", "synced_at": datetime(2026, 11, 12, 0, 0, tzinfo=UTC)},
        ],
    )
    body = download(
        client_for(admin).get(export_url(org, date_from="2026-11-10", date_to="2026-11-11"))
    )
    rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
    assert [row["record_key"] for row in rows] == ["first", "last"]
    assert rows[0]["synced_at"] == "2026-11-10T00:00:00.000000Z"
    assert rows[1]["synced_at"] == "2026-11-11T23:59:59.999999Z"


def test_the_filters_apply_and_other_organisations_rows_never_appear(
    client_for, org, member, flow, other_org
):
    other_flow = ProcessFlowFactory(organisation=org, environment=flow.environment, name="B")
    theirs = ProcessFlowFactory(environment__organisation=other_org)
    day = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    insert_rows(
        flow,
        [
            {"record_key": "a-ok", "synced_at": day},
            {"record_key": "a-bad", "synced_at": day, "status": "failed"},
        ],
    )
    insert_rows(other_flow, [{"record_key": "b-bad", "synced_at": day, "status": "failed"}])
    insert_rows(theirs, [{"record_key": "theirs", "synced_at": day}])
    client = client_for(member)

    def keys(**filters):
        body = download(
            client.get(export_url(org, date_from="2026-11-10", date_to="2026-11-10", **filters))
        )
        return [row["record_key"] for row in csv.DictReader(io.StringIO(body.decode(), newline=""))]

    assert keys() == ["a-ok", "a-bad", "b-bad"]
    assert keys(status="failed") == ["a-bad", "b-bad"]
    assert keys(flow=str(flow.public_id)) == ["a-ok", "a-bad"]
    assert keys(flow=str(flow.public_id), status="failed") == ["a-bad"]


def test_an_empty_range_is_a_header_only_file(client_for, org, member, flow):
    body = download(
        client_for(member).get(export_url(org, date_from="2026-01-01", date_to="2026-01-31"))
    )
    assert body == b"synced_at,flow,flow_id,record_key,status,direction,message\r\n"


def test_a_deleted_flow_leaves_its_name_empty(client_for, org, member, flow):
    insert_rows(flow, [{"record_key": "orphan", "synced_at": datetime(2026, 11, 10, tzinfo=UTC)}])
    with connection.cursor() as cursor:
        cursor.execute("UPDATE usage_syncinfo SET flow_id = 987654321")
    body = download(
        client_for(member).get(export_url(org, date_from="2026-11-10", date_to="2026-11-10"))
    )
    assert body.split(b"\r\n")[1] == b"2026-11-10T00:00:00.000000Z,,,orphan,success,outbound,ok"


def test_the_file_streams_in_chunks(client_for, org, member, flow, monkeypatch):
    monkeypatch.setattr(export, "CHUNK_BYTES", 1024)
    insert_series(flow, 400, newest=datetime(2026, 11, 10, 12, tzinfo=UTC))
    response = client_for(member).get(export_url(org, date_from="2026-11-10", date_to="2026-11-10"))
    chunks = list(response.streaming_content)
    assert len(chunks) > 10
    assert all(len(chunk) < 1024 + 200 for chunk in chunks)
    assert b"".join(chunks).count(b"\r\n") == 401


@pytest.mark.parametrize(
    ("params", "field_error"),
    [
        (
            {"date_from": "2026-11-20", "date_to": "2026-11-19"},
            "The end date must be on or after the start date.",
        ),
        (
            {"date_from": "2025-01-01", "date_to": "2026-02-05"},
            "Export at most 400 days at a time; this range has 401 days.",
        ),
        ({"date_from": "", "date_to": "2026-11-19"}, "Pick a date."),
        ({"date_to": "2026-11-19"}, "Pick a date."),
        ({"date_from": "2026-11-19"}, "Pick a date."),
        ({"date_from": "yesterday", "date_to": "2026-11-19"}, "Enter a valid date."),
        (
            {"date_from": "2026-11-01", "date_to": "2026-11-19", "status": "maybe"},
            "Select a valid choice.",
        ),
        (
            {"date_from": "2026-11-01", "date_to": "2026-11-19", "flow": "x"},
            "Choose one of your organisation&#x27;s ProcessFlows.",
        ),
    ],
)
def test_bad_ranges_are_form_errors(client_for, org, member, flow, params, field_error):
    response = client_for(member).get(export_url(org, **params))
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert field_error in response.content.decode()


def test_another_organisations_flow_is_refused(client_for, org, member, flow, other_org):
    theirs = ProcessFlowFactory(environment__organisation=other_org)
    response = client_for(member).get(
        export_url(org, date_from="2026-11-01", date_to="2026-11-19", flow=str(theirs.public_id))
    )
    assert response.status_code == 400
    assert "Choose one of your organisation&#x27;s ProcessFlows." in response.content.decode()


def test_four_hundred_days_are_allowed(client_for, org, member, flow):
    response = client_for(member).get(export_url(org, date_from="2025-01-01", date_to="2026-02-04"))
    assert download(response).startswith(b"synced_at,")


def test_the_export_page_is_prefilled_from_the_sync_info_filters(client_for, org, member, flow):
    response = client_for(member).get(
        f"/o/{org.slug}/sync-info/export/?status=failed&date_from=2026-11-01&flow={flow.public_id}"
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert '<option value="failed" selected>Failed</option>' in html
    assert 'value="2026-11-01"' in html
    assert f'<option value="{flow.public_id}" selected>' in html
    assert '<input type="hidden" name="export" value="csv">' in html
    assert "Download CSV" in html


def test_every_role_may_export(client_for, org, admin, billing_user, member, flow):
    for user in (admin, billing_user, member):
        response = client_for(user).get(
            export_url(org, date_from="2026-11-01", date_to="2026-11-02")
        )
        assert download(response).startswith(b"synced_at,")


def test_the_export_sql_orders_by_the_key_and_joins_the_flow_names():
    select, params = export.sync_info_select(
        organisation_id=7,
        start=datetime(2026, 1, 1, tzinfo=UTC),
        end=datetime(2026, 2, 1, tzinfo=UTC),
        flow_id=3,
        status="failed",
    )
    assert "LEFT JOIN subscriptions_processflow f ON f.id = s.flow_id" in select
    assert select.endswith("ORDER BY s.synced_at, s.id")
    assert params == [
        7,
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
        3,
        "failed",
    ]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_download_abandoned_half_way_leaves_the_connection_usable(org, flow, monkeypatch):
    """A browser that goes away closes the generator mid-COPY: psycopg cancels the COPY and
    drains it, and the connection serves the next request (outside a test transaction)."""
    monkeypatch.setattr(export, "CHUNK_BYTES", 1024)
    insert_series(flow, 50_000, newest=datetime(2026, 11, 10, 12, tzinfo=UTC))
    stream = export.sync_info_csv(
        organisation_id=org.pk,
        start=datetime(2026, 11, 1, tzinfo=UTC),
        end=datetime(2026, 11, 11, tzinfo=UTC),
    )
    assert next(stream).startswith(b"synced_at,flow,")
    stream.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_syncinfo WHERE organisation_id = %s", [org.pk])
        assert cursor.fetchone() == (50_000,)
