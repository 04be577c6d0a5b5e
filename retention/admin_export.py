"""Ops: "Download configuration export" on Django admin's Organisation list.

An action added to the existing OrganisationAdmin (accounts/admin.py owns the class; this
module appends to the registered instance's `actions`, so accounts does not import retention).
It downloads the same JSON as the Admins' self-service link, for exactly one selected
organisation, deleted ones excepted (their configuration is gone). Imported from
retention/admin.py so it runs when the admin site loads.
"""

from django.contrib import admin, messages
from django.utils import timezone

from accounts.models import Organisation
from retention.export_views import configuration_export_response


@admin.action(description="Download configuration export")
def download_configuration_export(modeladmin, request, queryset):
    organisations = list(queryset[:2])
    if len(organisations) != 1:
        modeladmin.message_user(
            request, "Select exactly one organisation to export.", level=messages.ERROR
        )
        return None
    organisation = organisations[0]
    if organisation.status == Organisation.Status.DELETED:
        modeladmin.message_user(
            request,
            f"{organisation.name} was deleted: there is no configuration left to export.",
            level=messages.ERROR,
        )
        return None
    return configuration_export_response(organisation=organisation, now=timezone.now())


def _register() -> None:
    organisation_admin = admin.site._registry.get(Organisation)
    if organisation_admin is None:
        return
    actions = list(organisation_admin.actions or [])
    if download_configuration_export not in actions:
        organisation_admin.actions = [*actions, download_configuration_export]


_register()
