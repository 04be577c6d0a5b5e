from django.urls import include, path

from retention import export_views, views

app_name = "retention"

organisation_urlpatterns = [
    path("settings/privacy/", views.privacy, name="privacy"),
    path(
        "settings/privacy/configuration-export/",
        export_views.configuration_export_view,
        name="configuration_export",
    ),
]

urlpatterns = [path("o/<slug:org_slug>/", include(organisation_urlpatterns))]
