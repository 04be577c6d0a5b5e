"""Keyset pagination on (a moment, id), newest first: "Newer" and "Older" links that carry the
position of a row, never an OFFSET, so any page costs what the first does and rows added while
someone pages never shift what they see (docs/architecture.md#billing).

A cursor is the sort key of a row, base64-encoded: it names a position, not a row, so it needs
no signature: the queryset it is applied to is already scoped to one organisation, and a
tampered cursor only moves the position within it.
"""

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Q, QuerySet


def cursor_encode(moment: datetime, pk: int) -> str:
    """An opaque page position: a row's (moment, id)."""
    raw = f"{moment.astimezone(UTC).isoformat()}|{pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_decode(value: str) -> tuple[datetime, int] | None:
    """The (moment, id) of a cursor, or None for anything that is not one."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        moment, pk = raw.split("|")
        moment, pk = datetime.fromisoformat(moment), int(pk)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if moment.tzinfo is None:
        return None
    return moment, pk


@dataclass
class Page:
    rows: list
    newer: str | None  # cursor of the page before (newer rows), or None on the first page
    older: str | None  # cursor of the page after (older rows), or None on the last page
    first: bool


def keyset_page(
    queryset: QuerySet,
    *,
    field: str,
    size: int,
    before: tuple[datetime, int] | None = None,
    after: tuple[datetime, int] | None = None,
) -> Page:
    """One page of `queryset`, newest first by (`field`, id): the rows older than `before`,
    or the page just newer than `after`; neither gives the newest page. No OFFSET and no
    COUNT: an index on (organisation, field, id) serves every page alike."""

    def cursor(row) -> str:
        return cursor_encode(getattr(row, field), row.pk)

    if after is not None:
        moment, pk = after
        rows = list(
            queryset.filter(**{f"{field}__gte": moment})
            .filter(Q(**{f"{field}__gt": moment}) | Q(id__gt=pk))
            .order_by(field, "id")[: size + 1]
        )
        more_newer = len(rows) > size
        if more_newer or len(rows) == size:
            rows = rows[:size][::-1]
            return Page(
                rows=rows,
                newer=cursor(rows[0]) if more_newer else None,
                older=cursor(rows[-1]),
                first=not more_newer,
            )
        # Fewer than a page above the cursor (an old link, filters changed): the newest page.
        return keyset_page(queryset, field=field, size=size)
    if before is not None:
        moment, pk = before
        queryset = queryset.filter(**{f"{field}__lte": moment}).filter(
            Q(**{f"{field}__lt": moment}) | Q(id__lt=pk)
        )
    rows = list(queryset.order_by(f"-{field}", "-id")[: size + 1])
    more_older = len(rows) > size
    rows = rows[:size]
    return Page(
        rows=rows,
        newer=cursor(rows[0]) if before is not None and rows else None,
        older=cursor(rows[-1]) if more_older else None,
        first=before is None,
    )
