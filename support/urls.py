from django.urls import include, path

from support import views

app_name = "support"

organisation_urlpatterns = [
    path("support/", views.tickets, name="tickets"),
    path("support/<uuid:ticket_id>/", views.ticket, name="ticket"),
    path(
        "support/attachments/<uuid:attachment_id>/",
        views.attachment_download,
        name="attachment",
    ),
]

urlpatterns = [path("o/<slug:org_slug>/", include(organisation_urlpatterns))]
