"""Ops views of billing. Issued invoices are read-only; payments are recorded by an action
that calls the same service the app uses."""

from django.contrib import admin, messages
from django.utils import timezone

from accounts.audit import Actor, client_ip
from billing.dunning import dunning_extend_grace, invoice_mark_uncollectible, step_due_at
from billing.models import (
    BillingProfile,
    DunningCase,
    DunningStep,
    Invoice,
    InvoiceDocument,
    InvoiceLine,
    OverageCharge,
    Payment,
    PaymentMethod,
    TaxRate,
)
from billing.services import invoice_revised_copy_issue, payment_record_manual
from billing_portal.admin import ReadOnlyModelAdmin, permission_check, reason_asked
from billing_portal.errors import ServiceError
from billing_portal.money import format_money
from subscriptions.admin import SubscriptionAdmin
from subscriptions.models import Subscription


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = ("position", "kind", "description", "quantity", "unit_amount", "amount")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


class PaymentInline(admin.TabularInline):
    model = Payment
    extra = 0
    can_delete = False
    fields = (
        "attempt",
        "method_kind",
        "status",
        "amount",
        "failure_message",
        "reference",
        "created_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyModelAdmin):
    list_display = (
        "number",
        "organisation",
        "kind",
        "status",
        "total_display",
        "payment_method_kind",
        "issued_at",
        "due_at",
    )
    list_filter = ("status", "kind", "payment_method_kind", "currency")
    search_fields = ("number", "organisation__name", "organisation__slug")
    list_select_related = ("organisation",)
    date_hierarchy = "issued_at"
    inlines = [InvoiceLineInline, PaymentInline]
    actions = ["record_payment", "mark_uncollectible", "issue_revised_copy"]

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff

    @admin.display(description="Total", ordering="total")
    def total_display(self, obj):
        return format_money(obj.total, obj.currency)

    has_record_payment_permission = permission_check("billing.record_payment")
    has_write_off_permission = permission_check("billing.write_off")
    has_issue_revised_copy_permission = permission_check("billing.issue_revised_copy")

    @admin.action(
        description="Record bank transfer / PO payment received (marks paid)",
        permissions=["record_payment"],
    )
    def record_payment(self, request, queryset):
        reason, page = reason_asked(
            self,
            request,
            queryset,
            action="record_payment",
            title="Record payment received",
            intro="Mark these invoices paid by bank transfer or purchase order?",
        )
        if page is not None:
            return page
        actor = Actor(user=request.user, ip_address=client_ip(request))
        for invoice in queryset.select_related("organisation"):
            try:
                payment_record_manual(
                    invoice=invoice,
                    actor=actor,
                    reference=f"Recorded by {request.user.email}",
                    reason=reason,
                    now=timezone.now(),
                )
            except ServiceError as error:
                self.message_user(request, error.message, level=messages.ERROR)
            else:
                self.message_user(request, f"{invoice.number} marked paid.")
        return None

    @admin.action(
        description="Mark uncollectible (write off; restores the account if nothing else is due)",
        permissions=["write_off"],
    )
    def mark_uncollectible(self, request, queryset):
        reason, page = reason_asked(
            self,
            request,
            queryset,
            action="mark_uncollectible",
            title="Write off",
            intro="Mark these invoices uncollectible? The amounts will not be collected.",
        )
        if page is not None:
            return page
        actor = Actor(user=request.user, ip_address=client_ip(request))
        for invoice in queryset.select_related("organisation", "subscription"):
            try:
                invoice_mark_uncollectible(
                    invoice=invoice, actor=actor, reason=reason, now=timezone.now()
                )
            except ServiceError as error:
                self.message_user(request, error.message, level=messages.ERROR)
            else:
                self.message_user(request, f"{invoice.number} marked uncollectible.")
        return None

    @admin.action(
        description="Issue revised copy (current billing details; the original stays)",
        permissions=["issue_revised_copy"],
    )
    def issue_revised_copy(self, request, queryset):
        reason, page = reason_asked(
            self,
            request,
            queryset,
            action="issue_revised_copy",
            title="Issue revised copy",
            intro="Render a new PDF of these invoices with the organisation's current billing "
            "details, marked Revised with today's date? The original PDFs do not change.",
        )
        if page is not None:
            return page
        issue_revised_copies(self, request, queryset, reason=reason)
        return None


def issue_revised_copies(modeladmin, request, invoices, *, reason):
    """Shared by the invoice and the support-ticket admin."""
    actor = Actor(user=request.user, ip_address=client_ip(request))
    for invoice in invoices.select_related("organisation"):
        try:
            invoice_revised_copy_issue(
                invoice=invoice, actor=actor, reason=reason, now=timezone.now()
            )
        except ServiceError as error:
            modeladmin.message_user(request, error.message, level=messages.ERROR)
        else:
            modeladmin.message_user(request, f"Revised copy of {invoice.number} issued.")


@admin.register(Payment)
class PaymentAdmin(ReadOnlyModelAdmin):
    list_display = (
        "invoice",
        "organisation",
        "attempt",
        "method_kind",
        "status",
        "amount",
        "created_at",
    )
    list_filter = ("status", "method_kind")
    search_fields = ("invoice__number", "organisation__name", "processor_id", "idempotency_key")
    list_select_related = ("invoice", "organisation")
    date_hierarchy = "created_at"


@admin.register(PaymentMethod)
class PaymentMethodAdmin(ReadOnlyModelAdmin):
    list_display = (
        "organisation",
        "brand",
        "last4",
        "exp_month",
        "exp_year",
        "status",
        "created_at",
    )
    list_filter = ("status", "brand")
    search_fields = ("organisation__name", "last4")
    list_select_related = ("organisation",)


@admin.register(BillingProfile)
class BillingProfileAdmin(admin.ModelAdmin):
    list_display = ("organisation", "company_name", "country", "vat_number", "po_number")
    search_fields = ("organisation__name", "company_name", "vat_number")
    list_filter = ("country",)
    list_select_related = ("organisation",)
    readonly_fields = ("organisation", "stripe_customer_id", "updated_at")


@admin.register(TaxRate)
class TaxRateAdmin(admin.ModelAdmin):
    list_display = ("country", "name", "rate_bp", "updated_at")
    search_fields = ("country", "name")


@admin.register(InvoiceDocument)
class InvoiceDocumentAdmin(ReadOnlyModelAdmin):
    list_display = ("invoice", "kind", "created_at")
    list_filter = ("kind",)
    list_select_related = ("invoice",)
    search_fields = ("invoice__number",)
    exclude = ("pdf",)


class DunningStepInline(admin.TabularInline):
    model = DunningStep
    extra = 0
    can_delete = False
    fields = ("step", "ran_at", "attempts", "succeeded", "result")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(DunningCase)
class DunningCaseAdmin(ReadOnlyModelAdmin):
    """The dunning timeline of each subscription, with the ops actions on it."""

    list_display = (
        "organisation",
        "status",
        "started_at",
        "suspension_date",
        "grace_extension_days",
    )
    list_filter = ("status",)
    search_fields = ("organisation__name", "organisation__slug")
    list_select_related = ("organisation",)
    date_hierarchy = "started_at"
    inlines = [DunningStepInline]
    actions = ["extend_grace"]

    @admin.display(description="Suspension on")
    def suspension_date(self, obj):
        return step_due_at(obj, DunningStep.Step.DAY_14)

    has_extend_grace_permission = permission_check("billing.extend_grace")

    @admin.action(description="Extend the grace period by 7 days", permissions=["extend_grace"])
    def extend_grace(self, request, queryset):
        reason, page = reason_asked(
            self,
            request,
            queryset,
            action="extend_grace",
            title="Extend the grace period",
            intro="Move the suspension of these accounts back by 7 days?",
        )
        if page is not None:
            return page
        actor = Actor(user=request.user, ip_address=client_ip(request))
        for case in queryset.select_related("organisation", "subscription"):
            try:
                dunning_extend_grace(
                    case=case, days=7, actor=actor, reason=reason, now=timezone.now()
                )
            except ServiceError as error:
                self.message_user(request, f"{case.organisation}: {error.message}", messages.ERROR)
            else:
                self.message_user(request, f"{case.organisation}: suspension moved back 7 days.")
        return None


class DunningCaseInline(admin.TabularInline):
    model = DunningCase
    extra = 0
    can_delete = False
    fields = ("status", "started_at", "grace_extension_days", "closed_at", "timeline_link")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="Steps")
    def timeline_link(self, obj):
        return ", ".join(
            f"{step.get_step_display()}: {'paid' if step.succeeded else step.result}"
            for step in obj.steps.all()
        )


# The subscription admin (subscriptions app) shows the dunning timeline too; subscriptions
# cannot import billing, so billing extends it here.
admin.site.unregister(Subscription)


@admin.register(Subscription)
class SubscriptionWithDunningAdmin(SubscriptionAdmin):
    inlines = [*SubscriptionAdmin.inlines, DunningCaseInline]


@admin.register(OverageCharge)
class OverageChargeAdmin(ReadOnlyModelAdmin):
    """Which usage months were billed for overage, and on which invoice."""

    list_display = ("subscription", "month_start", "transactions", "units", "amount", "invoice")
    list_select_related = ("subscription__organisation", "invoice")
    search_fields = ("subscription__organisation__name", "invoice__number")
    date_hierarchy = "month_start"


# Stripe webhook events and the ledger's violations (issue 10) have their own modules.
from billing import admin_events, admin_ledger  # noqa: E402, F401
