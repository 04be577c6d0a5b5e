from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class PortalConfig(AppConfig):
    """The composition layer: what joins several apps (docs/architecture.md)."""

    name = "portal"
    verbose_name = "Portal"
    default = True

    def ready(self):
        # The organisation pages' frame joins subscriptions, sso, billing and retention:
        # composed here, plugged into accounts' hooks.
        from portal import frame

        frame.install()


class PortalAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with our site (the ops dashboard on the index)."""

    default = False
    default_site = "portal.sites.PortalAdminSite"
