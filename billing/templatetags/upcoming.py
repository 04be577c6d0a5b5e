"""`{% load upcoming %}`: the upcoming invoice on Settings > Subscription and the Overview
(billing.upcoming; a template tag, so the subscriptions app's page shows it without importing
billing, which sits above it)."""

from django import template
from django.utils import timezone

from accounts.models import Organisation
from billing.upcoming import Upcoming, upcoming_invoices

register = template.Library()


@register.simple_tag
def upcoming_invoices_for(organisation: Organisation) -> Upcoming:
    return upcoming_invoices(organisation=organisation, now=timezone.now())
