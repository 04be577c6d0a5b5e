import pytest

# START and add_card are re-exported: tests in tests/billing still import them from here.
from tests.billing.helpers import START, add_card, subscribe  # noqa: F401


@pytest.fixture
def subscribed(localstripe, org, admin):
    """`org` on Professional monthly since START, first invoice paid by Visa."""
    return subscribe(org)
