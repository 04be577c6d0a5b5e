"""Django admin for ops: the plan catalogue, subscriptions and the control-plane objects.

Plans and their prices are edited here. Subscriptions change
only through services (status through subscriptions.states), so their fields are read-only
here; the one write ops make is scheduling the switch to annual billing (article section 7).
"""

from django.contrib import admin, messages
from django.utils import timezone

from accounts.audit import Actor
from core.admin import ReadOnlyModelAdmin
from core.errors import ServiceError
from core.http import client_ip
from subscriptions.models import (
    Connection,
    Environment,
    PaymentMethodKind,
    Plan,
    PlanChange,
    PlanPrice,
    ProcessFlow,
)
from subscriptions.services import (
    subscription_schedule_annual_billing,
    subscription_set_payment_method_kind,
)


class PlanPriceInline(admin.TabularInline):
    model = PlanPrice
    extra = 0
    fields = ("currency", "monthly_amount", "annual_amount", "annual_discount", "overage_per_1000")
    readonly_fields = ("annual_discount",)

    @admin.display(description="Annual discount")
    def annual_discount(self, obj):
        if obj.pk is None:
            return "—"
        return f"{obj.annual_discount_percent:.1f} %"


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "code",
        "rank",
        "is_public",
        "max_connections",
        "max_process_flows",
        "max_environments",
        "monthly_transactions",
        "support_tier",
    )
    list_filter = ("is_public", "support_tier")
    search_fields = ("name", "code")
    readonly_fields = ("updated_at",)
    inlines = [PlanPriceInline]
    fieldsets = (
        (None, {"fields": ("code", "name", "rank", "description", "is_public")}),
        (
            "Limits",
            {
                "fields": (
                    "max_connections",
                    "max_process_flows",
                    "max_environments",
                    "monthly_transactions",
                )
            },
        ),
        (
            "Service",
            {"fields": ("support_tier", "sync_info_retention_days", "snapshot_retention_days")},
        ),
        ("Features", {"fields": ("allows_sso", "allows_bank_transfer", "allows_purchase_order")}),
        ("Changes", {"fields": ("updated_at",)}),
    )

    def has_delete_permission(self, request, obj=None):
        return False  # subscriptions and invoices refer to plans; hide one with is_public


class PlanChangeInline(admin.TabularInline):
    """The subscription's plan-change history: upgrades and downgrades, newest first."""

    model = PlanChange
    extra = 0
    can_delete = False
    verbose_name = "plan change"
    verbose_name_plural = "plan change history"
    fields = (
        "created_at",
        "kind",
        "status",
        "from_plan",
        "to_plan",
        "billing_cycle",
        "effective_at",
        "kept_flows",
        "quote_total",
        "created_by",
        "closed_at",
    )
    readonly_fields = fields
    ordering = ("-created_at", "-id")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("from_plan", "to_plan", "created_by")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Flows kept")
    def kept_flows(self, obj):
        return len(obj.keep_flow_ids) if obj.kind == PlanChange.Kind.DOWNGRADE else "—"


# Registered by portal.admin, which adds billing's dunning timeline (subscriptions cannot
# import billing): no app registers over, or patches, another app's admin.
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = (
        "organisation",
        "plan",
        "billing_cycle",
        "scheduled_billing_cycle",
        "status",
        "current_period_end",
        "currency",
        "payment_method_kind",
    )
    list_filter = ("status", "billing_cycle", "plan")
    list_select_related = ("organisation", "plan")
    search_fields = ("organisation__name", "organisation__slug")
    date_hierarchy = "current_period_end"
    actions = [
        "switch_to_annual_at_renewal",
        "pay_by_bank_transfer",
        "pay_by_purchase_order",
        "pay_by_card",
    ]
    readonly_fields = (
        "public_id",
        "organisation",
        "plan",
        "billing_cycle",
        "scheduled_billing_cycle",
        "status",
        "currency",
        "payment_method_kind",
        "anchor_at",
        "period_index",
        "current_period_start",
        "current_period_end",
        "current_price",
        "pending_downgrade",
        "cancel_at_period_end",
        "canceled_at",
        "cancellation_reason",
        "cancellation_detail",
        "created_at",
        "activated_at",
        "ended_at",
        "status_changed_at",
    )
    inlines = [PlanChangeInline]

    @admin.display(description="Pending downgrade")
    def pending_downgrade(self, obj):
        change = next(
            (
                c
                for c in obj.plan_changes.all()
                if c.kind == PlanChange.Kind.DOWNGRADE and c.status == PlanChange.Status.SCHEDULED
            ),
            None,
        )
        if change is None:
            return "—"
        return f"To {change.to_plan} on {change.effective_at:%Y-%m-%d %H:%M} UTC"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("plan_changes__to_plan")

    def has_add_permission(self, request):
        return False  # customers subscribe in the portal; the first invoice starts it

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Switch to annual billing at next renewal", permissions=["change"])
    def switch_to_annual_at_renewal(self, request, queryset):
        """Each selected monthly subscription switches at its renewal; others are refused."""
        actor = Actor(user=request.user, ip_address=client_ip(request))
        switched = 0
        for subscription in queryset.select_related("organisation", "plan").order_by("pk"):
            try:
                subscription_schedule_annual_billing(
                    subscription=subscription, actor=actor, now=timezone.now()
                )
            except ServiceError as error:
                self.message_user(request, error.message, level=messages.ERROR)
            else:
                switched += 1
        if switched:
            self.message_user(
                request,
                f"{switched} subscription(s) switch to annual billing at their next renewal.",
                level=messages.SUCCESS,
            )

    def _set_payment_method(self, request, queryset, kind):
        actor = Actor(user=request.user, ip_address=client_ip(request))
        changed = 0
        for subscription in queryset.order_by("pk"):
            try:
                subscription_set_payment_method_kind(
                    subscription=subscription, kind=kind, actor=actor, now=timezone.now()
                )
            except ServiceError as error:
                self.message_user(request, error.message, level=messages.ERROR)
            else:
                changed += 1
        if changed:
            label = PaymentMethodKind(kind).label.lower()
            self.message_user(
                request,
                f"{changed} subscription(s) are invoiced for payment by {label} from now on.",
                level=messages.SUCCESS,
            )

    @admin.action(description="Invoice for bank transfer (annual plans)", permissions=["change"])
    def pay_by_bank_transfer(self, request, queryset):
        self._set_payment_method(request, queryset, PaymentMethodKind.BANK_TRANSFER)

    @admin.action(
        description="Invoice against a purchase order (Enterprise annual)", permissions=["change"]
    )
    def pay_by_purchase_order(self, request, queryset):
        self._set_payment_method(request, queryset, PaymentMethodKind.PURCHASE_ORDER)

    @admin.action(description="Charge the card on file", permissions=["change"])
    def pay_by_card(self, request, queryset):
        self._set_payment_method(request, queryset, PaymentMethodKind.CARD)


@admin.register(Environment)
class EnvironmentAdmin(ReadOnlyModelAdmin):
    list_display = ("name", "organisation", "created_at", "created_by")
    list_select_related = ("organisation", "created_by")
    search_fields = ("name", "organisation__name", "organisation__slug")
    date_hierarchy = "created_at"


@admin.register(Connection)
class ConnectionAdmin(ReadOnlyModelAdmin):
    list_display = ("name", "application", "environment", "organisation", "created_at")
    list_select_related = ("organisation", "environment")
    search_fields = ("name", "application", "organisation__name", "organisation__slug")
    date_hierarchy = "created_at"


@admin.register(ProcessFlow)
class ProcessFlowAdmin(ReadOnlyModelAdmin):
    list_display = (
        "name",
        "organisation",
        "environment",
        "status",
        "pause_reason",
        "paused_at",
        "created_at",
    )
    list_filter = ("status", "pause_reason")
    list_select_related = ("organisation", "environment")
    search_fields = ("name", "organisation__name", "organisation__slug", "environment__name")
    date_hierarchy = "created_at"
