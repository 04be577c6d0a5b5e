"""Proration of an upgrade (billing.upgrades charges it)."""

from datetime import datetime, timedelta
from decimal import Decimal

from core.money import round_half_up

_TICK = timedelta(microseconds=1)


def prorate(
    *, old_price: int, new_price: int, period_start: datetime, period_end: datetime, at: datetime
) -> int:
    """The charge for moving from `old_price` to `new_price` at instant `at` of a period.

    Rule: (new price − old price) × remaining seconds ÷ period seconds, rounded half-up to the
    currency's minor unit. The remaining time is clamped to the period: before it starts the
    whole difference is due, at or after its end nothing. Prices and the result are integer
    minor units; the arithmetic is exact (Decimal, microsecond resolution).
    """
    total = (period_end - period_start) // _TICK
    if total <= 0:
        raise ValueError("A billing period must end after it starts.")
    remaining = min(max((period_end - at) // _TICK, 0), total)
    return round_half_up(Decimal(new_price - old_price) * remaining / total)
