from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class BillingPortalConfig(AppConfig):
    name = "billing_portal"
    verbose_name = "Billing portal"
    default = True


class PortalAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with our site (the ops dashboard on the index)."""

    default = False
    default_site = "billing_portal.admin.PortalAdminSite"
