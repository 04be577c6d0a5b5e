"""Ops views of billing. Issued invoices are read-only; payments are recorded by an action
that calls the same service the app uses."""

from datetime import datetime

from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.audit import Actor
from billing.admin_credit_notes import CreditNoteInline, InvoiceCreditNotes
from billing.admin_ledger import OpenOrResolved
from billing.documents import invoice_revised_copy_issue
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
    ReconciliationDifference,
    TaxRate,
)
from billing.payments import payment_record_manual
from billing.reconciliation import (
    difference_dismiss,
    difference_resolve_mark_failed,
    difference_resolve_record_payment,
    difference_resolve_refund,
)
from core.admin import ReadOnlyModelAdmin, permission_check, reason_asked
from core.errors import ServiceError
from core.http import client_ip
from core.money import format_money


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
        "authentication_requested_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Invoice)
class InvoiceAdmin(InvoiceCreditNotes, ReadOnlyModelAdmin):
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
    inlines = [InvoiceLineInline, PaymentInline, CreditNoteInline]
    actions = ["record_payment", "mark_uncollectible", "issue_revised_copy", "issue_credit_note"]

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
        "authentication_requested_at",
    )
    list_filter = (
        "status",
        "method_kind",
        ("authentication_requested_at", admin.EmptyFieldListFilter),
    )
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


# The dunning timeline on the subscription admin (composed by portal.admin).
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


@admin.register(OverageCharge)
class OverageChargeAdmin(ReadOnlyModelAdmin):
    """Which usage months were billed for overage, and on which invoice."""

    list_display = ("subscription", "month_start", "transactions", "units", "amount", "invoice")
    list_select_related = ("subscription__organisation", "invoice")
    search_fields = ("subscription__organisation__name", "invoice__number")
    date_hierarchy = "month_start"


# Reconciliation with Stripe
# (docs/architecture.md#decision-money-invariants-are-checked-every-night)


def _money(side: dict, key: str) -> str:
    amount = side.get(key)
    return format_money(amount, side.get("currency", "")) if isinstance(amount, int) else ""


def _moment(value: str) -> str:
    return f"{datetime.fromisoformat(value):%Y-%m-%d %H:%M:%S %Z}" if value else ""


def _invoice(side: dict) -> str:
    if not side.get("invoice"):
        return ""
    if "invoice_status" not in side:
        return side["invoice"]
    return (
        f"{side['invoice']} ({side['invoice_status']}, {_money(side, 'amount_due')} due "
        f"of {_money(side, 'invoice_total')})"
    )


def difference_sides(ours: dict, theirs: dict) -> list[tuple[str, str, str]]:
    """The two sides of a difference as (what, ours, Stripe's) rows, readable."""
    payment = f"#{ours['payment']}, attempt {ours['attempt']}" if "payment" in ours else ""
    # A refund made at Stripe that no credit note here records: which, and why not; the
    # amounts compared are then our payment's and the charge's.
    refund = []
    charged = _money(theirs, "amount")
    if theirs.get("refund"):
        refund.append(("Refund", "", f"{theirs['refund']} ({charged})"))
        charged = _money(theirs, "charge_amount")
    if ours.get("problem"):
        refund.append(("Not recorded because", ours["problem"], ""))
    return refund + [
        ("Invoice", _invoice(ours), theirs.get("invoice", "")),
        ("Payment", payment, theirs.get("payment", "")),
        ("Status", ours.get("status", ""), theirs.get("status", "")),
        ("Amount", _money(ours, "amount"), charged),
        ("Refunded", "", _money(theirs, "amount_refunded")),
        ("PaymentIntent", ours.get("processor_id", ""), theirs.get("payment_intent", "")),
        ("Idempotency key", ours.get("idempotency_key", ""), theirs.get("idempotency_key", "")),
        ("Created", _moment(ours.get("created", "")), _moment(theirs.get("created", ""))),
        ("Stripe customer", "", theirs.get("customer", "")),
        ("Description", "", theirs.get("description", "")),
    ]


def _refunded(credit_note) -> str:
    """What "Refund this charge" did, as ops read it."""
    if credit_note.status == credit_note.Status.REFUND_PENDING:
        return (
            f"credit note {credit_note.number} issued; Stripe has not confirmed the refund "
            "yet, the charge job sends it again."
        )
    return f"credit note {credit_note.number} issued, charge refunded."


@admin.register(ReconciliationDifference)
class ReconciliationDifferenceAdmin(ReadOnlyModelAdmin):
    """Where our payments and Stripe disagree, per organisation; resolved by actions that call
    billing.reconciliation's services (a reason asked, the audit log written)."""

    list_display = (
        "found_at",
        "organisation",
        "kind",
        "invoice",
        "our_amount",
        "stripe_amount",
        "processor_id",
        "state",
        "last_seen_at",
    )
    list_filter = (
        OpenOrResolved,
        "kind",
        ("organisation", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("processor_id", "organisation__name", "organisation__slug", "invoice__number")
    list_select_related = ("organisation", "invoice")
    date_hierarchy = "found_at"
    fields = (
        "kind",
        "organisation",
        "invoice",
        "payment",
        "processor_id",
        "sides",
        "found_at",
        "last_seen_at",
        "resolved_at",
        "resolution",
        "resolved_by",
        "note",
    )
    readonly_fields = fields
    actions = ["record_charge", "refund_charge", "mark_payment_failed", "dismiss"]

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff

    @admin.display(description="Ours")
    def our_amount(self, obj):
        return _money(obj.ours, "amount") or "—"

    @admin.display(description="Stripe")
    def stripe_amount(self, obj):
        return _money(obj.theirs, "amount") or "—"

    @admin.display(description="State", ordering="resolved_at")
    def state(self, obj):
        return obj.get_resolution_display() if obj.resolved_at else "Open"

    @admin.display(description="Ours and Stripe's")
    def sides(self, obj):
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td><td>{}</td></tr>",
            difference_sides(obj.ours, obj.theirs),
        )
        return format_html(
            '<table class="reconciliation-sides"><thead><tr><th></th><th>Ours</th>'
            "<th>Stripe</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    has_resolve_difference_permission = permission_check("billing.resolve_difference")

    def _resolve(self, request, queryset, *, service, action, title, intro, done):
        reason, page = reason_asked(
            self, request, queryset, action=action, title=title, intro=intro
        )
        if page is not None:
            return page
        actor = Actor(user=request.user, ip_address=client_ip(request))
        for difference in queryset.select_related("organisation").order_by("pk"):
            try:
                result = service(
                    difference=difference, actor=actor, reason=reason, now=timezone.now()
                )
            except ServiceError as error:
                self.message_user(request, f"{difference}: {error.message}", messages.ERROR)
            else:
                self.message_user(
                    request, f"{difference}: {done(result) if callable(done) else done}"
                )
        return None

    @admin.action(
        description="Record the payment (Stripe charged it; marks the invoice paid)",
        permissions=["resolve_difference"],
    )
    def record_charge(self, request, queryset):
        return self._resolve(
            request,
            queryset,
            service=difference_resolve_record_payment,
            action="record_charge",
            title="Record the payment",
            intro="Record these Stripe charges as payments of the invoices their metadata "
            "names? Receipts are emailed as for any card payment.",
            done="payment recorded, invoice paid.",
        )

    @admin.action(
        description="Refund this charge (charged twice; credit note and refund to the card)",
        permissions=["resolve_difference"],
    )
    def refund_charge(self, request, queryset):
        return self._resolve(
            request,
            queryset,
            service=difference_resolve_refund,
            action="refund_charge",
            title="Refund this charge",
            intro="Refund these second charges in full to the card? A credit note (duplicate "
            "charge) is issued on each invoice and emailed to its billing contacts.",
            done=_refunded,
        )

    @admin.action(
        description="Mark our payment failed (Stripe has no such charge; reopens the invoice)",
        permissions=["resolve_difference"],
    )
    def mark_payment_failed(self, request, queryset):
        return self._resolve(
            request,
            queryset,
            service=difference_resolve_mark_failed,
            action="mark_payment_failed",
            title="Mark our payment failed",
            intro="Mark these payments failed? Their invoices are open again: the customer is "
            "emailed and the failed-payment schedule applies.",
            done="payment marked failed, invoice open again.",
        )

    @admin.action(
        description="Dismiss (checked, nothing to change here)", permissions=["resolve_difference"]
    )
    def dismiss(self, request, queryset):
        return self._resolve(
            request,
            queryset,
            service=difference_dismiss,
            action="dismiss",
            title="Dismiss",
            intro="Close these differences without changing any payment? They will not be "
            "reported again.",
            done="dismissed.",
        )


# Stripe webhook events, the ledger's violations and disputes have their own modules.
from billing import admin_disputes, admin_events, admin_ledger  # noqa: E402, F401
