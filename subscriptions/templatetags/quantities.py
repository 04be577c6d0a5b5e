"""`{% load quantities %}`: counts and limits as people read them.

Money has its own library, `{% load money %}` (core/templatetags/money.py).
"""

from django import template

register = template.Library()


@register.filter
def thousands(number) -> str:
    """An integer count with thousands separators: 50000 is "50,000"."""
    if number is None or number == "":
        return ""
    return f"{int(number):,}"
