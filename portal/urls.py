from django.urls import path

from portal import views

app_name = "portal"

# Included before accounts' URLs: the Overview is the organisation's own address.
urlpatterns = [path("o/<slug:org_slug>/", views.overview, name="overview")]
