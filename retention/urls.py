from django.urls import include, path

from retention import views

app_name = "retention"

organisation_urlpatterns = [
    path("settings/privacy/", views.privacy, name="privacy"),
]

urlpatterns = [path("o/<slug:org_slug>/", include(organisation_urlpatterns))]
