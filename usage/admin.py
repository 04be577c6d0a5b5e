"""Ops view of usage alerts (the ops dashboard's "above 80%" figure links here)."""

from django.contrib import admin
from django.utils import timezone

from core.admin import ReadOnlyModelAdmin
from usage.models import UsageAlert


class CurrentMonth(admin.SimpleListFilter):
    title = "usage month"
    parameter_name = "current"

    def lookups(self, request, model_admin):
        return [("1", "Current usage month")]

    def queryset(self, request, queryset):
        if self.value() == "1":
            now = timezone.now()
            return queryset.filter(month_start__lte=now, month_end__gt=now)
        return queryset


@admin.register(UsageAlert)
class UsageAlertAdmin(ReadOnlyModelAdmin):
    list_display = (
        "organisation",
        "kind",
        "threshold",
        "transactions",
        "projected",
        "month_start",
        "month_end",
        "sent_at",
    )
    list_filter = (CurrentMonth, "kind", "threshold")
    search_fields = ("organisation__name", "organisation__slug")
    list_select_related = ("organisation",)
    date_hierarchy = "month_start"
