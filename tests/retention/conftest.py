import pytest

from tests.retention.test_purge import drop_tier_tables


@pytest.fixture
def tier_tables_dropped():
    """Transactional tests: the tier tables and blocks they created were committed (their rows
    are emptied after every committing test, tests/conftest.py)."""
    yield
    drop_tier_tables()
