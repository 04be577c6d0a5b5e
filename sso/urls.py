from django.urls import include, path

from sso import views

app_name = "sso"

organisation_urlpatterns = [
    path("settings/sso/", views.settings, name="settings"),
]

urlpatterns = [path("o/<slug:org_slug>/", include(organisation_urlpatterns))]
