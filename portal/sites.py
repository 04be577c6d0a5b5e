"""Django admin's site: the ops dashboard, which spans every app, on its index page.

Its own module, not portal/admin.py: the site is built when the first app's admin module
registers a model, before portal/admin.py (which imports those modules) may load."""

from allauth.mfa.models import Authenticator
from django.contrib import admin
from django.urls import path
from django.utils import timezone

from billing.admin_finance import (
    EXPORT_PERMISSION,
    FinanceExportForm,
    finance_export_view,
    initial_for,
)
from portal.dashboard import ops_dashboard
from portal.ops_charts import ops_charts


class PortalAdminSite(admin.AdminSite):
    """Django admin with the ops dashboard on its index page."""

    site_header = "APPSeCONNECT ops"
    site_title = "APPSeCONNECT ops"
    index_title = "Ops dashboard"

    # Models a library registers that this site does not offer. allauth.mfa's authenticators:
    # ops never see two-factor secrets; the user's page shows the facts and offers the reset
    # (accounts.admin).
    NOT_OFFERED = (Authenticator,)

    def register(self, model_or_iterable, admin_class=None, **options):
        models = (
            model_or_iterable
            if isinstance(model_or_iterable, list | tuple)
            else [model_or_iterable]
        )
        offered = [model for model in models if model not in self.NOT_OFFERED]
        if offered:
            super().register(offered, admin_class, **options)

    def get_urls(self):
        return [
            path(
                "finance-export/",
                self.admin_view(lambda request: finance_export_view(request, admin_site=self)),
                name="finance_export",
            ),
            *super().get_urls(),
        ]

    def index(self, request, extra_context=None):
        now = timezone.now()
        context = {"dashboard": ops_dashboard(now=now), "charts": ops_charts(now=now)}
        if request.user.has_perm(EXPORT_PERMISSION):
            context["finance_export_form"] = FinanceExportForm(initial=initial_for(now), now=now)
        return super().index(request, {**context, **(extra_context or {})})
