"""Calendar months in UTC, as ops and the accountant count them (the ops dashboard, its charts,
the finance export). A customer's usage month is another thing: usage.months."""

from datetime import UTC, datetime


def utc_month(year: int, month: int) -> datetime:
    """The first instant of `month` of `year` in UTC; a month past 12 or below 1 rolls into the
    next or previous year (utc_month(2026, 13) is January 2027)."""
    return datetime(year + (month - 1) // 12, (month - 1) % 12 + 1, 1, tzinfo=UTC)


def month_start(moment: datetime) -> datetime:
    """The first instant of the UTC calendar month holding `moment`."""
    moment = moment.astimezone(UTC)
    return utc_month(moment.year, moment.month)


def months_after(start: datetime, count: int) -> datetime:
    """The month `count` months after the month starting at `start` (before it when negative)."""
    return utc_month(start.year, start.month + count)
