import pytest

from usage.overage import overage_amount, overage_units


@pytest.mark.parametrize(
    ("used", "units"),
    [(0, 0), (50_000, 0), (50_001, 1), (51_000, 1), (51_001, 2), (150_000, 100)],
)
def test_every_started_thousand_above_the_limit(used, units):
    assert overage_units(used=used, limit=50_000) == units
    assert overage_amount(used=used, limit=50_000, price_per_1000=500) == units * 500
