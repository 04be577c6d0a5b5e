"""CSV files written by Postgres: `COPY (SELECT ...) TO STDOUT` streamed in chunks, so memory
stays flat and Python never formats a row (usage/export.py says why, with figures).

COPY ends rows with LF, and each COPY row arrives on its own, so its last byte is replaced by
CRLF (a line break inside a quoted field stays as it was, as the csv module writes it)."""

from collections.abc import Iterator

from django.db import connections

CHUNK_BYTES = 64 * 1024


def copy_csv(
    select: str, params: dict | list, *, using: str = "default", chunk_bytes: int = CHUNK_BYTES
) -> Iterator[bytes]:
    """The result of `select` as CSV with a header row, in chunks of about `chunk_bytes`, with
    CRLF line ends (RFC 4180, what spreadsheets expect). A generator: the query runs when the
    response is iterated, on that moment's connection."""
    statement = f"COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER)"
    with connections[using].cursor() as cursor, cursor.cursor.copy(statement, params) as copy:
        chunk = bytearray()
        for row in copy:
            chunk += row[:-1]
            chunk += b"\r\n"
            if len(chunk) >= chunk_bytes:
                yield bytes(chunk)
                chunk.clear()
        if chunk:
            yield bytes(chunk)
