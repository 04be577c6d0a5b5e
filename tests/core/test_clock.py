"""The product takes the time from Python, never from the database.

Services take `now`; views, jobs and commands read `timezone.now()`. Tests control that clock
(time-machine, or a `now` they pass), and `make test-dates` moves it for every Python process,
while the database server keeps the real clock (scripts/test_dates.sh says why). A query that
asked Postgres for the time would answer from another clock than the rest of the product.
"""

import re
from pathlib import Path

import pytest

from tests.helpers import PRODUCT_APPS

ROOT = Path(__file__).resolve().parents[2]

# SQL's clock functions, and Django's Now() (a database function); not Python's now().
DATABASE_CLOCK = re.compile(
    r"(?<![\w.])(?i:now)\(\)|(?<![\w.])Now\(|(?i:\b(current_date|current_time|current_timestamp"
    r"|localtimestamp|transaction_timestamp|statement_timestamp|clock_timestamp|timeofday)\b)"
)


def database_clock_uses(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if DATABASE_CLOCK.search(line)]


@pytest.mark.parametrize(
    "line",
    [
        "cursor.execute(\"DELETE FROM t WHERE created < now() - interval '1 day'\")",
        "Invoice.objects.filter(due_at__lt=Now())",
        "WHERE day = CURRENT_DATE",
        "SELECT clock_timestamp()",
    ],
)
def test_the_check_finds_the_database_clock(line):
    assert database_clock_uses(line) == [line]


def test_python_clocks_are_not_the_database_clock():
    assert database_clock_uses("now = timezone.now()\nstamp = datetime.now(UTC)\n") == []


def test_no_product_code_asks_the_database_for_the_time():
    found = {
        str(path.relative_to(ROOT)): uses
        for package in PRODUCT_APPS
        for path in sorted((ROOT / package).rglob("*.py"))
        if (uses := database_clock_uses(path.read_text()))
    }
    assert found == {}
