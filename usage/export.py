"""Sync Info export as CSV (article section 12: Sync Info > Export > date range > download CSV).

Postgres writes the CSV itself (`COPY (SELECT ...) TO STDOUT`), which is several times faster
than a server-side cursor and the csv module (ENVIRONMENT.md: about 361,000 rows/s through
psycopg's copy() against about 89,000). The rows are read from the connection as Postgres sends
them and handed on in chunks of about 64 KB, so memory stays flat whatever the range holds.

The file follows the csv module's defaults (RFC 4180): a header row, fields quoted only when
they hold a comma, a quote or a line break, quotes doubled, rows ended by CRLF. COPY ends rows
with LF, and each COPY row arrives on its own, so its last byte is replaced by CRLF (a line
break inside a quoted message stays as it was, as the csv module writes it). An empty message
is written as NULL, i.e. an empty field, where COPY would write "".
"""

from collections.abc import Iterator
from datetime import datetime

from core.csv_copy import copy_csv

COLUMNS = ("synced_at", "flow", "flow_id", "record_key", "status", "direction", "message")
CHUNK_BYTES = 64 * 1024

_SELECT = """
SELECT to_char(s.synced_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS synced_at,
       f.name AS flow,
       f.public_id AS flow_id,
       s.record_key,
       s.status,
       s.direction,
       NULLIF(s.message, '') AS message
FROM usage_syncinfo s
LEFT JOIN subscriptions_processflow f ON f.id = s.flow_id
WHERE s.organisation_id = %s AND s.synced_at >= %s AND s.synced_at < %s{filters}
ORDER BY s.synced_at, s.id
"""


def sync_info_select(
    *,
    organisation_id: int,
    start: datetime,
    end: datetime,
    flow_id: int | None = None,
    status: str | None = None,
) -> tuple[str, list]:
    """The export's SELECT and its parameters: one organisation's rows in [start, end), oldest
    first, with the flow's name and public id."""
    filters, params = "", [organisation_id, start, end]
    if flow_id is not None:
        filters += " AND s.flow_id = %s"
        params.append(flow_id)
    if status:
        filters += " AND s.status = %s"
        params.append(status)
    return _SELECT.format(filters=filters).strip(), params


def sync_info_csv(
    *,
    organisation_id: int,
    start: datetime,
    end: datetime,
    flow_id: int | None = None,
    status: str | None = None,
    using: str = "default",
) -> Iterator[bytes]:
    """The CSV file, header first, in chunks of about CHUNK_BYTES.

    Lazy: no query runs until the response is iterated, which happens after the view has
    returned, so the database work starts then, on the request's own connection.
    """
    select, params = sync_info_select(
        organisation_id=organisation_id, start=start, end=end, flow_id=flow_id, status=status
    )
    # yield from, not return: this frame stays on the stack while rows stream, so a
    # traceback (or the scoping test) names the export.
    yield from copy_csv(select, params, using=using, chunk_bytes=CHUNK_BYTES)
