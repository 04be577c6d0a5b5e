import pytest

from tests.billing.helpers import subscribe


@pytest.fixture
def subscribed(localstripe, org, admin):
    """`org` on Professional monthly since START, first invoice paid by Visa."""
    return subscribe(org)
