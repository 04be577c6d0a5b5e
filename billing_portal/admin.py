from django.contrib import admin


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Ops look, never edit: the rows are evidence (invoices, payments, audit) or belong to
    the customer, who manages them in the portal. Changes go through admin actions that call
    the same services as the portal."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
