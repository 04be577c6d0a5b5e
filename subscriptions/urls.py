from django.urls import include, path

from subscriptions import views

app_name = "subscriptions"

organisation_urlpatterns = [
    path("settings/subscription/", views.settings, name="settings"),
]

urlpatterns = [path("o/<slug:org_slug>/", include(organisation_urlpatterns))]
