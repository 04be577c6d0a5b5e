"""Overage: flows keep running past the monthly limit, and every
started 1,000 transactions above it is charged at the plan's rate."""

OVERAGE_UNIT = 1_000


def overage_units(*, used: int, limit: int) -> int:
    """Started thousands above the limit: limit+1 is 1 unit, limit+1000 is 1, limit+1001 is 2."""
    above = used - limit
    return 0 if above <= 0 else -(-above // OVERAGE_UNIT)


def overage_amount(*, used: int, limit: int, price_per_1000: int) -> int:
    """The overage charge in minor units for one usage month."""
    return overage_units(used=used, limit=limit) * price_per_1000
