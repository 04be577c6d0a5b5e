from django import template

from core.money import format_money

register = template.Library()


@register.filter
def money(amount, currency):
    """{{ invoice.total|money:invoice.currency }} -> "$799.00" (amounts are minor units)."""
    if amount is None or amount == "":
        return ""
    return format_money(int(amount), str(currency))


@register.filter
def percent_bp(rate_bp):
    """Basis points as a percentage: 2300 -> "23%", 2550 -> "25.5%"."""
    value = int(rate_bp) / 100
    return f"{value:g}%"
