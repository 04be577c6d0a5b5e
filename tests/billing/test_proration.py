from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from billing.proration import prorate

START = datetime(2026, 1, 31, 10, 0, tzinfo=UTC)
END = datetime(2026, 2, 28, 10, 0, tzinfo=UTC)
prices = st.integers(min_value=0, max_value=10_000_000)
lengths = st.integers(min_value=1, max_value=400 * 86_400)


def test_exact_cents_half_way_through_a_month():
    middle = START + (END - START) / 2
    assert (
        prorate(old_price=79900, new_price=199900, period_start=START, period_end=END, at=middle)
        == 60000
    )


def test_rounds_half_up_to_the_cent():
    # 1 cent over 2 halves of a period: 0.5 cent rounds up to 1.
    end = START + timedelta(seconds=2)
    assert (
        prorate(
            old_price=0,
            new_price=1,
            period_start=START,
            period_end=end,
            at=START + timedelta(seconds=1),
        )
        == 1
    )
    # 3 cents, a third left: exactly 1.
    end = START + timedelta(seconds=3)
    assert (
        prorate(
            old_price=0,
            new_price=3,
            period_start=START,
            period_end=end,
            at=START + timedelta(seconds=2),
        )
        == 1
    )


@given(old=prices, extra=prices, length=lengths, offset=st.floats(min_value=0, max_value=1))
def test_an_upgrade_is_never_negative_nor_more_than_the_difference(old, extra, length, offset):
    end = START + timedelta(seconds=length)
    at = START + timedelta(seconds=length * offset)
    charge = prorate(
        old_price=old, new_price=old + extra, period_start=START, period_end=end, at=at
    )
    assert 0 <= charge <= extra


@given(old=prices, extra=prices, length=lengths)
def test_zero_at_the_end_and_the_full_difference_at_the_start(old, extra, length):
    end = START + timedelta(seconds=length)
    new = old + extra
    assert prorate(old_price=old, new_price=new, period_start=START, period_end=end, at=end) == 0
    assert (
        prorate(
            old_price=old,
            new_price=new,
            period_start=START,
            period_end=end,
            at=end + timedelta(days=3),
        )
        == 0
    )
    assert (
        prorate(old_price=old, new_price=new, period_start=START, period_end=end, at=START) == extra
    )
    assert (
        prorate(
            old_price=old,
            new_price=new,
            period_start=START,
            period_end=end,
            at=START - timedelta(days=1),
        )
        == extra
    )


@given(
    old=prices,
    extra=prices,
    length=lengths,
    a=st.floats(min_value=0, max_value=1),
    b=st.floats(min_value=0, max_value=1),
)
def test_monotone_later_upgrades_cost_no_more(old, extra, length, a, b):
    end = START + timedelta(seconds=length)
    early, late = sorted((a, b))
    at_early = START + timedelta(seconds=length * early)
    at_late = START + timedelta(seconds=length * late)
    kwargs = {"old_price": old, "new_price": old + extra, "period_start": START, "period_end": end}
    assert prorate(**kwargs, at=at_early) >= prorate(**kwargs, at=at_late)
