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
