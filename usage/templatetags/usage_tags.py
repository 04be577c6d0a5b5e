from django import template
from django.utils import timezone

from usage.selectors import usage_summary

register = template.Library()


@register.simple_tag
def usage_summary_for(subscription):
    """The Usage section's figures for Settings > Subscription.

    A template tag, so the subscriptions app's view does not import usage (usage sits above
    subscriptions: docs/architecture.md#usage).
    """
    if subscription is None:
        return None
    return usage_summary(subscription=subscription, now=timezone.now())
