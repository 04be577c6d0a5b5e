"""`{% load cancellation %}`: the dates of a cancellation, for the Settings > Subscription panel."""

from django import template

from subscriptions.cancellation import data_deletion_at as _data_deletion_at

register = template.Library()


@register.filter
def data_deletion_at(subscription):
    """When the organisation's data is deleted after its subscription ends (30 days later)."""
    return _data_deletion_at(subscription)
