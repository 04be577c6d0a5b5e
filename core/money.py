"""Money is integer minor units plus an ISO currency code; Decimal only inside calculations."""

from decimal import ROUND_HALF_UP, Decimal

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}


def round_half_up(value: Decimal) -> int:
    """Round a minor-unit amount computed in Decimal to a whole minor unit, halves up."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def format_money(amount: int, currency: str) -> str:
    """1234567, "USD" -> "$12,345.67"; negative amounts get a leading minus sign."""
    sign = "-" if amount < 0 else ""
    units, cents = divmod(abs(int(amount)), 100)
    number = f"{units:,}.{cents:02d}"
    symbol = SYMBOLS.get(currency.upper())
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {currency.upper()}"


def money_decimal(amount: int) -> str:
    """Minor units as a plain decimal in major units, as a spreadsheet reads it (CSV exports):
    12900 -> "129.00", -2500 -> "-25.00"."""
    sign = "-" if amount < 0 else ""
    units, cents = divmod(abs(int(amount)), 100)
    return f"{sign}{units}.{cents:02d}"


# The card processor's (Stripe's) smallest charge per currency, in minor units, from its table
# "Minimum and maximum charge amounts" (docs.stripe.com/currencies). It lives here, beside the
# currency symbols and with no imports, because three places must agree on it: billing (what it
# may charge, what it carries to a later invoice instead), the quote pages, and the Stripe
# stand-in (scripts/localstripe_server.py), which runs without Django. Zero-decimal currencies
# (JPY, ...) are left out: our amounts assume two decimals (format_money).
MINIMUM_CHARGE = {
    "USD": 50,
    "AED": 200,
    "AUD": 50,
    "BGN": 100,
    "BRL": 50,
    "CAD": 50,
    "CHF": 50,
    "CZK": 1500,
    "DKK": 250,
    "EUR": 50,
    "GBP": 30,
    "HKD": 400,
    "INR": 50,
    "MXN": 1000,
    "MYR": 200,
    "NOK": 300,
    "NZD": 50,
    "PLN": 200,
    "RON": 200,
    "SEK": 300,
    "SGD": 50,
    "THB": 1000,
}


def minimum_charge(currency: str) -> int:
    """The smallest card charge the processor accepts in `currency`, in minor units."""
    try:
        return MINIMUM_CHARGE[currency.upper()]
    except KeyError:
        raise ValueError(f"No minimum charge is known for {currency!r}.") from None


def minimum_charge_message(currency: str) -> str:
    """Stripe's own wording when an amount is under the minimum: "Amount must be at least
    $0.50 usd"."""
    return (
        f"Amount must be at least {format_money(minimum_charge(currency), currency)} "
        f"{currency.lower()}"
    )


def split_in_proportion(total: int, weights: list[int]) -> list[int]:
    """`total` minor units split over `weights` in proportion, to the unit: the parts add up
    to `total` exactly (largest remainder, ties to the earlier weight). With total ≤
    sum(weights), no part exceeds its weight. [] weights or a zero sum give all zeros."""
    whole = sum(weights)
    if not weights or whole <= 0:
        return [0] * len(weights)
    floors = [total * weight // whole for weight in weights]
    remainders = [total * weight % whole for weight in weights]
    short = total - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:short]:
        floors[i] += 1
    return floors
