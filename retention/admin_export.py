"""Ops: "Download configuration export" on Django admin's Organisation list.

An admin action for the Organisation admin of accounts (which cannot import retention):
portal.admin composes the registered OrganisationAdmin from accounts' class and this action.
It downloads the same JSON as the Admins' self-service link, for exactly one selected
organisation, deleted ones excepted (their configuration is gone).
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
