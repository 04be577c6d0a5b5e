"""Ops view of disputes (chargebacks): read-only, as Stripe's events recorded them
(billing.disputes). Registered from billing/admin.py; the subscription admin shows each
subscription's disputes on its timeline through `subscription_disputes` (portal.admin).

A dispute is answered in the Stripe dashboard (evidence), not here: the rows are evidence.
"""

from datetime import UTC

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from billing.disputes import dispute_timeline, disputes_of_subscription
from billing.models import Dispute, StripeEvent
from core.admin import ReadOnlyModelAdmin, ValuesWithBlankListFilter
from core.money import format_money

_CLOSED = sorted(Dispute.CLOSED)


class OpenOrClosed(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "Open"), ("closed", "Closed")]

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.exclude(status__in=_CLOSED)
        if self.value() == "closed":
            return queryset.filter(status__in=_CLOSED)
        return queryset


@admin.register(Dispute)
class DisputeAdmin(ReadOnlyModelAdmin):
    list_display = (
        "processor_id",
        "organisation",
        "invoice",
        "payment_link",
        "amount_display",
        "reason",
        "status",
        "opened_at",
        "closed_at",
        "lost_applied_at",
    )
    list_filter = (OpenOrClosed, "status", ("reason", ValuesWithBlankListFilter), "currency")
    search_fields = ("=processor_id", "invoice__number", "organisation__name", "organisation__slug")
    list_select_related = ("organisation", "invoice", "payment")
    date_hierarchy = "opened_at"
    fields = (
        "processor_id",
        "organisation",
        "invoice",
        "payment_link",
        "amount_display",
        "reason",
        "status",
        "opened_at",
        "closed_at",
        "event_created",
        "lost_applied_at",
        "events",
    )
    readonly_fields = fields

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff

    @admin.display(description="Amount", ordering="amount")
    def amount_display(self, obj):
        return format_money(obj.amount, obj.currency)

    @admin.display(description="Payment")
    def payment_link(self, obj):
        payment = obj.payment
        url = reverse("admin:billing_payment_change", args=[payment.pk])
        return format_html(
            '<a href="{}">#{} ({}, {})</a>', url, payment.pk, payment.processor_id, payment.status
        )

    @admin.display(description="Stripe events")
    def events(self, obj):
        events = StripeEvent.objects.filter(payload__data__object__id=obj.processor_id).order_by(
            "received_at", "pk"
        )
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a> {} received {} UTC: {}</li>',
            (
                (
                    reverse("admin:billing_stripeevent_change", args=[event.pk]),
                    event.event_id,
                    event.type,
                    f"{event.received_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
                    event.outcome,
                )
                for event in events
            ),
        )
        return format_html("<ul>{}</ul>", rows) if rows else "—"


def subscription_disputes(subscription) -> str:
    """The disputes of a subscription's invoices as a timeline (opened, won or lost, invoice
    open again), newest dispute first; "—" when there is none."""
    items = []
    for dispute in disputes_of_subscription(subscription):
        url = reverse("admin:billing_dispute_change", args=[dispute.pk])
        steps = format_html_join(
            "",
            "<li>{} UTC: {}</li>",
            (
                (f"{at.astimezone(UTC):%Y-%m-%d %H:%M}", what)
                for at, what in dispute_timeline(dispute)
            ),
        )
        items.append(format_html('<li><a href="{}">{}</a><ul>{}</ul></li>', url, dispute, steps))
    if not items:
        return "—"
    return format_html(
        '<ul class="dispute-timeline">{}</ul>', format_html_join("", "{}", ((i,) for i in items))
    )
