from django.urls import include, path

from billing import views

app_name = "billing"

organisation_urlpatterns = [
    path("settings/billing/", views.settings, name="settings"),
]

urlpatterns = [path("o/<slug:org_slug>/", include(organisation_urlpatterns))]
