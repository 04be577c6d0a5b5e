"""Django admin's site: the ops dashboard, which spans every app, on its index page.

Its own module, not portal/admin.py: the site is built when the first app's admin module
registers a model, before portal/admin.py (which imports those modules) may load."""

from django.contrib import admin
from django.utils import timezone

from portal.dashboard import ops_dashboard


class PortalAdminSite(admin.AdminSite):
    """Django admin with the ops dashboard on its index page."""

    site_header = "APPSeCONNECT ops"
    site_title = "APPSeCONNECT ops"
    index_title = "Ops dashboard"

    def index(self, request, extra_context=None):
        return super().index(
            request, {"dashboard": ops_dashboard(now=timezone.now()), **(extra_context or {})}
        )
