from django.urls import path

from usage import api

app_name = "usage"

urlpatterns = [
    path("api/v1/sync-info", api.sync_info, name="api_sync_info"),
    path("api/v1/flows", api.flows, name="api_flows"),
    path("api/v1/openapi.json", api.openapi, name="api_openapi"),
]
