"""Ops view of the customer balance (billing.balance): every entry, read-only, and "Adjust
balance", which adds credit or takes it back with a reason
(docs/architecture.md#decision-ops-actions-that-change-money-or-access-ask-why).

Registered from billing/apps.py. The entries are the balance's history: nobody edits them;
an adjustment is a new entry written by the same service the tests call (balance_adjust).
"""

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import Organisation
from billing.balance import balance_adjust, balance_of
from billing.models import BalanceEntry
from core.admin import ReadOnlyModelAdmin
from core.errors import ServiceError
from core.http import client_ip
from core.money import format_money

ADJUST_PERMISSION = "billing.adjust_balance"


class BalanceAdjustForm(forms.Form):
    organisation = forms.SlugField(
        label="Organisation",
        help_text="Its slug, as in the portal's address /o/<slug>/.",
    )
    currency = forms.ChoiceField(label="Currency")
    amount = forms.DecimalField(
        label="Amount",
        max_digits=12,
        decimal_places=2,
        help_text="In the currency's units: 25.00 adds credit, -25.00 takes it back.",
    )
    reason = forms.CharField(
        label="Reason (kept in the organisation's audit log; the customer does not see it)",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=500,
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["currency"].choices = [(c, c) for c in settings.CURRENCIES]

    def clean_organisation(self) -> Organisation:
        slug = self.cleaned_data["organisation"]
        organisation = Organisation.objects.filter(slug=slug).first()
        if organisation is None:
            raise forms.ValidationError(f"No organisation has the slug “{slug}”.")
        return organisation

    def clean_amount(self) -> int:
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError("Give an amount other than zero.")
        return int(amount * 100)

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Give the reason for the adjustment.")
        return reason


@admin.register(BalanceEntry)
class BalanceEntryAdmin(ReadOnlyModelAdmin):
    change_list_template = "admin/billing/balanceentry/change_list.html"
    list_display = (
        "created_at",
        "organisation",
        "kind",
        "amount_display",
        "remaining_display",
        "description",
        "invoice",
        "created_by",
    )
    list_filter = ("kind", "currency", ("organisation", admin.RelatedOnlyFieldListFilter))
    search_fields = ("organisation__name", "organisation__slug", "description", "reason")
    list_select_related = ("organisation", "invoice", "created_by")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-pk")
    raw_id_fields = ("organisation", "source", "credit_note", "invoice")

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff

    def has_adjust_permission(self, request) -> bool:
        return request.user.has_perm(ADJUST_PERMISSION)

    @admin.display(description="Amount", ordering="amount")
    def amount_display(self, obj):
        return f"{'+' if obj.amount > 0 else ''}{format_money(obj.amount, obj.currency)}"

    @admin.display(description="Left of this credit", ordering="remaining")
    def remaining_display(self, obj):
        return format_money(obj.remaining, obj.currency) if obj.amount > 0 else "—"

    def changelist_view(self, request, extra_context=None):
        extra = {"can_adjust": self.has_adjust_permission(request), **(extra_context or {})}
        return super().changelist_view(request, extra)

    def get_urls(self):
        return [
            path(
                "adjust/",
                self.admin_site.admin_view(self.adjust_view),
                name="billing_balanceentry_adjust",
            ),
            *super().get_urls(),
        ]

    def adjust_view(self, request):
        """Adjust balance: organisation, currency, amount (+/-) and a reason; the service
        refuses what would take the balance below zero, with nothing written."""
        if not self.has_adjust_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = BalanceAdjustForm(request.POST)
        else:
            form = BalanceAdjustForm(
                initial={
                    "organisation": request.GET.get("organisation", ""),
                    "currency": request.GET.get("currency", ""),
                }
            )
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            organisation = data["organisation"]
            try:
                balance_adjust(
                    organisation=organisation,
                    currency=data["currency"],
                    amount=data["amount"],
                    actor=Actor(user=request.user, ip_address=client_ip(request)),
                    reason=data["reason"],
                    now=timezone.now(),
                )
            except ServiceError as error:
                field = error.field if error.field in form.fields else None
                form.add_error(field, error.message)
            else:
                now_holds = balance_of(organisation=organisation, currency=data["currency"])
                self.message_user(
                    request,
                    f"Balance of {organisation.name} adjusted by "
                    f"{format_money(data['amount'], data['currency'])}; it is now "
                    f"{format_money(now_holds, data['currency'])}.",
                )
                url = reverse("admin:billing_balanceentry_changelist")
                return redirect(f"{url}?organisation__id__exact={organisation.pk}")
        return TemplateResponse(
            request,
            "admin/billing/balanceentry/adjust.html",
            {
                **self.admin_site.each_context(request),
                "title": "Adjust a customer balance",
                "form": form,
                "opts": self.model._meta,
            },
            status=400 if form.errors else 200,
        )
