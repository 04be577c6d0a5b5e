from django.urls import include, path, re_path

from usage import api, views

app_name = "usage"

organisation_urlpatterns = [
    # Sync Info > Export (article section 12) and the Sync Info list itself.
    path("sync-info/", views.sync_info, name="sync_info"),
    path("sync-info/export/", views.sync_info_export, name="sync_info_export"),
    # The machine API's keys, per environment (Admins).
    path("settings/api-keys/", views.api_keys, name="api_keys"),
    path("settings/api-keys/new/", views.api_key_create_view, name="api_key_create"),
    path(
        "settings/api-keys/<int:key_id>/revoke/",
        views.api_key_revoke_view,
        name="api_key_revoke",
    ),
    # Settings > Subscription > Usage alerts (Admins): thresholds and the forecast alert.
    path("settings/subscription/usage-alerts/", views.alerts, name="alerts"),
    path(
        "settings/subscription/usage-alerts/add/",
        views.alert_threshold_add_view,
        name="alert_threshold_add",
    ),
    path(
        "settings/subscription/usage-alerts/<uuid:threshold_id>/remove/",
        views.alert_threshold_remove_view,
        name="alert_threshold_remove",
    ),
    path(
        "settings/subscription/usage-alerts/forecast/",
        views.forecast_alert_view,
        name="forecast_alert",
    ),
]

urlpatterns = [
    path("api/v1/sync-info", api.sync_info, name="api_sync_info"),
    path("api/v1/flows", api.flows, name="api_flows"),
    path("api/v1/openapi.json", api.openapi, name="api_openapi"),
    re_path(r"^api/(?P<path>.*)$", api.not_found, name="api_not_found"),
    path("o/<slug:org_slug>/", include(organisation_urlpatterns)),
]
