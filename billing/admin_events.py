"""Ops view of the Stripe webhook events received: evidence, read-only.

Imported at the end of billing/admin.py. Outcomes starting "needs review" (a customer
charged for an invoice that was already paid or voided, an amount that differs) are
the ones ops act on, e.g. with a refund in the Stripe dashboard.
"""

from django.contrib import admin

from billing.models import StripeEvent
from core.admin import ReadOnlyModelAdmin


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyModelAdmin):
    list_display = ("event_id", "type", "received_at", "processed_at", "outcome")
    list_filter = ("type",)
    search_fields = ("=event_id", "outcome", "payload__data__object__id")
    date_hierarchy = "received_at"
    ordering = ("-received_at",)
    fields = ("event_id", "type", "received_at", "processed_at", "outcome", "payload")
    readonly_fields = fields
