from django import template
from django.utils import timezone

from usage.selectors import alert_percents, usage_summary

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


@register.simple_tag
def usage_alert_choices_for(organisation):
    """The thresholds and forecast opt-in the Usage section's "Usage alerts" part lists."""
    return alert_percents(organisation=organisation)


@register.filter
def percents(values) -> str:
    """[50, 80, 100] as "50%, 80% and 100%"."""
    labels = [f"{value}%" for value in values]
    if len(labels) < 2:
        return "".join(labels)
    return f"{', '.join(labels[:-1])} and {labels[-1]}"
