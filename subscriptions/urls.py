from django.urls import include, path

from subscriptions import cancellation_views, views

app_name = "subscriptions"

organisation_urlpatterns = [
    path("flows/", views.flows, name="flows"),
    path("flows/new/", views.flow_create_view, name="flow_create"),
    path("flows/environments/new/", views.environment_create_view, name="environment_create"),
    path("flows/connections/new/", views.connection_create_view, name="connection_create"),
    path("flows/<uuid:flow_id>/pause/", views.flow_pause_view, name="flow_pause"),
    path("flows/<uuid:flow_id>/resume/", views.flow_resume_view, name="flow_resume"),
    path("settings/subscription/", views.settings, name="settings"),
    # Change Plan (downgrade, article section 3): pick a lower plan, review, confirm.
    path("settings/subscription/change-plan/", views.change_plan, name="change_plan"),
    path(
        "settings/subscription/change-plan/<slug:plan_code>/",
        views.change_plan_review,
        name="change_plan_review",
    ),
    path(
        "settings/subscription/scheduled-change/cancel/",
        views.scheduled_change_cancel,
        name="scheduled_change_cancel",
    ),
    # Cancel Subscription (article section 8) and its undo.
    path("settings/subscription/cancel/", cancellation_views.cancel, name="cancel"),
    path("settings/subscription/cancel/undo/", cancellation_views.cancel_undo, name="cancel_undo"),
]

urlpatterns = [path("o/<slug:org_slug>/", include(organisation_urlpatterns))]
