"""The admins that join several apps, registered once here, on top of every app.

A lower app's ModelAdmin cannot name the apps above it, and no app registers over, or
patches, another app's admin: the final admin of such a model is composed here from the
owning app's class and what the apps above add.
"""

from django.contrib import admin

from accounts.admin import OrganisationAdmin
from accounts.models import Organisation
from billing.admin import DunningCaseInline
from billing.admin_disputes import subscription_disputes
from retention.admin_export import download_configuration_export
from subscriptions.admin import SubscriptionAdmin
from subscriptions.models import Subscription


@admin.register(Organisation)
class PortalOrganisationAdmin(OrganisationAdmin):
    """accounts' admin with retention's configuration export."""

    actions = [*(OrganisationAdmin.actions or ()), download_configuration_export]


@admin.register(Subscription)
class SubscriptionWithDunningAdmin(SubscriptionAdmin):
    """subscriptions' admin with billing's dunning timeline and the disputes of its invoices."""

    inlines = [*SubscriptionAdmin.inlines, DunningCaseInline]
    readonly_fields = (*SubscriptionAdmin.readonly_fields, "disputes")

    @admin.display(description="Disputes (chargebacks)")
    def disputes(self, obj):
        return subscription_disputes(obj)
