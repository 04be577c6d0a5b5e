"""URLs for bench/load.py: the floors, then every URL of the portal."""

from django.http import HttpResponse
from django.urls import path

from accounts.tenancy import tenant_view
from billing_portal.urls import urlpatterns as portal_urlpatterns


def floor(request):
    """The anonymous floor: a tiny response through the same middleware stack, no query, no
    template."""
    return HttpResponse(b"ok\n", content_type="text/plain")


@tenant_view()
def signed_in_floor(request):
    """The signed-in floor: what every organisation page pays before its own work (the
    middleware, the session, the signed-in user, tenant_view's membership lookup and its access
    gates), then a tiny response: no template, no context processor, no other query."""
    return HttpResponse(b"ok\n", content_type="text/plain")


urlpatterns = [
    path("bench/floor/", floor, name="bench_floor"),
    path("o/<slug:org_slug>/bench/floor/", signed_in_floor, name="bench_signed_in_floor"),
    *portal_urlpatterns,
]
