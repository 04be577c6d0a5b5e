from django.urls import include, path

from subscriptions import views

app_name = "subscriptions"

organisation_urlpatterns = [
    path("flows/", views.flows, name="flows"),
    path("flows/new/", views.flow_create_view, name="flow_create"),
    path("flows/environments/new/", views.environment_create_view, name="environment_create"),
    path("flows/connections/new/", views.connection_create_view, name="connection_create"),
    path("flows/<uuid:flow_id>/pause/", views.flow_pause_view, name="flow_pause"),
    path("flows/<uuid:flow_id>/resume/", views.flow_resume_view, name="flow_resume"),
    path("settings/subscription/", views.settings, name="settings"),
]

urlpatterns = [path("o/<slug:org_slug>/", include(organisation_urlpatterns))]
