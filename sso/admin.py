"""Ops view of SSO: configurations and the attempt log, read-only; one action, switching
enforcement off for an organisation locked out by its IdP (with a reason, audited)."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.utils import timezone

from accounts.audit import Actor, client_ip
from billing_portal.admin import ReadOnlyModelAdmin
from billing_portal.errors import ServiceError
from sso.models import SsoAttempt, SsoConfiguration, SsoDomain
from sso.services import enforcement_switch_off_by_ops


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label="Reason (kept in the organisation's audit log)",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=500,
    )


@admin.register(SsoConfiguration)
class SsoConfigurationAdmin(ReadOnlyModelAdmin):
    list_display = (
        "organisation",
        "idp_type",
        "idp_entity_id",
        "tested_at",
        "enforced",
        "backup_admin",
        "metadata_refreshed_at",
    )
    list_filter = ("enforced", "idp_type", "provision_users")
    search_fields = ("organisation__name", "organisation__slug", "idp_entity_id")
    list_select_related = ("organisation", "backup_admin")
    actions = ["switch_off_enforcement"]
    readonly_fields = ("domains",)

    @admin.display(description="Email domains")
    def domains(self, obj):
        return (
            ", ".join(
                SsoDomain.objects.filter(organisation_id=obj.organisation_id).values_list(
                    "domain", flat=True
                )
            )
            or "—"
        )

    @admin.action(description="Switch off SSO enforcement (lockout recovery)")
    def switch_off_enforcement(self, request, queryset):
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            changed = 0
            for config in queryset.select_related("organisation"):
                try:
                    changed += enforcement_switch_off_by_ops(
                        organisation=config.organisation,
                        actor=Actor(user=request.user, ip_address=client_ip(request)),
                        reason=f"Support: {form.cleaned_data['reason']}",
                        now=timezone.now(),
                    )
                except ServiceError as error:
                    self.message_user(request, error.message, messages.ERROR)
                    return None
            self.message_user(
                request,
                f"Enforcement switched off for {changed} organisation(s).",
                messages.SUCCESS,
            )
            return None
        return TemplateResponse(
            request,
            "sso/admin_switch_off_enforcement.html",
            {
                **self.admin_site.each_context(request),
                "title": "Switch off SSO enforcement",
                "form": form,
                "configurations": queryset.select_related("organisation"),
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "opts": self.model._meta,
            },
        )


@admin.register(SsoDomain)
class SsoDomainAdmin(ReadOnlyModelAdmin):
    list_display = ("domain", "organisation", "created_at", "created_by")
    search_fields = ("domain", "organisation__name", "organisation__slug")
    list_select_related = ("organisation", "created_by")


@admin.register(SsoAttempt)
class SsoAttemptAdmin(ReadOnlyModelAdmin):
    list_display = ("created_at", "organisation", "mode", "outcome", "email", "reason")
    list_filter = ("outcome", "mode")
    search_fields = ("organisation__name", "organisation__slug", "email", "reason")
    list_select_related = ("organisation",)
    date_hierarchy = "created_at"
