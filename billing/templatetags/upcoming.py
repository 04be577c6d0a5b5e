"""`{% load upcoming %}`: the upcoming invoice on Settings > Subscription and the Overview
(billing.upcoming; a template tag, so the subscriptions app's page shows it without importing
billing, which sits above it)."""

from django import template
from django.utils import timezone

from accounts.models import Organisation
from billing.upcoming import Upcoming, upcoming_invoices
from subscriptions.models import Subscription
from usage.selectors import UsageSummary

register = template.Library()


@register.simple_tag
def upcoming_invoices_for(
    organisation: Organisation,
    subscription: Subscription | None = None,
    usage: UsageSummary | None = None,
) -> Upcoming:
    """On Settings > Subscription, what the page already read is passed in, not read again:
    the subscription (subscriptions.selectors.subscription_for_settings) and the Usage
    section's figures, whose instant the invoice is computed as of."""
    now = usage.as_of if usage is not None and usage.as_of is not None else timezone.now()
    return upcoming_invoices(
        organisation=organisation, now=now, subscription=subscription, usage=usage
    )
