"""`{% load deletion_countdown %}`: "in 12 days" before the organisation's data is deleted."""

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def days_until(moment):
    """Whole days from now until `moment`, counted in the active time zone's calendar days."""
    if moment is None:
        return None
    today = timezone.localdate()
    return max((timezone.localtime(moment).date() - today).days, 0)


@register.filter
def countdown(moment):
    days = days_until(moment)
    if days is None:
        return ""
    if days == 0:
        return "today"
    if days == 1:
        return "tomorrow"
    return f"in {days} days"
