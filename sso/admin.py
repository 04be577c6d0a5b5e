"""Ops view of SSO: configurations and the attempt log, read-only; one action, switching
enforcement off for an organisation locked out by its IdP (with a reason, audited)."""

from django.contrib import admin, messages
from django.utils import timezone

from accounts.audit import Actor
from core.admin import ReadOnlyModelAdmin, permission_check, reason_asked
from core.http import client_ip
from sso.enforcement import enforcement_switch_off_by_ops
from sso.models import SsoAttempt, SsoConfiguration, SsoDomain


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

    has_switch_off_enforcement_permission = permission_check("sso.switch_off_enforcement")

    @admin.action(
        description="Switch off SSO enforcement (lockout recovery)",
        permissions=["switch_off_enforcement"],
    )
    def switch_off_enforcement(self, request, queryset):
        reason, page = reason_asked(
            self,
            request,
            queryset,
            action="switch_off_enforcement",
            title="Switch off SSO enforcement",
            intro="Everyone in these organisations can then sign in with a password again. "
            "Their IdP settings stay; an Admin can enforce again after a successful test.",
        )
        if page is not None:
            return page
        changed = 0
        for config in queryset.select_related("organisation"):
            changed += enforcement_switch_off_by_ops(
                organisation=config.organisation,
                actor=Actor(user=request.user, ip_address=client_ip(request)),
                reason=f"Support: {reason}",
                now=timezone.now(),
            )
        self.message_user(
            request, f"Enforcement switched off for {changed} organisation(s).", messages.SUCCESS
        )
        return None


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
