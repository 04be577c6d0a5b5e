"""URLs for bench/load.py: the floor view, then every URL of the portal."""

from django.http import HttpResponse
from django.urls import path

from billing_portal.urls import urlpatterns as portal_urlpatterns


def floor(request):
    """The floor: a tiny response through the same middleware stack, no query, no template."""
    return HttpResponse(b"ok\n", content_type="text/plain")


urlpatterns = [path("bench/floor/", floor, name="bench_floor"), *portal_urlpatterns]
