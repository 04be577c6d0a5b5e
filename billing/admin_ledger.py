"""Ops view of the money invariants (billing.ledger): open violations per organisation.

Registered from billing/admin.py. Rows are the nightly check's findings: read-only; they close
by themselves once the data is right again.
"""

from django.contrib import admin

from billing.models import LedgerViolation
from core.admin import ReadOnlyModelAdmin


class OpenOrResolved(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "Open"), ("resolved", "Resolved")]

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(LedgerViolation)
class LedgerViolationAdmin(ReadOnlyModelAdmin):
    list_display = (
        "rule",
        "organisation",
        "subject",
        "message",
        "first_seen_at",
        "last_seen_at",
        "resolved_at",
    )
    list_filter = (OpenOrResolved, "rule", ("organisation", admin.RelatedOnlyFieldListFilter))
    search_fields = ("subject", "message", "organisation__name", "organisation__slug")
    list_select_related = ("organisation",)
    date_hierarchy = "first_seen_at"

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff
