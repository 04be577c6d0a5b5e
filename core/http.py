"""Facts about the request that several apps need."""

from django.conf import settings


def client_ip(request) -> str | None:
    """REMOTE_ADDR, or the hop our trusted proxy appended to X-Forwarded-For."""
    hops = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if hops and forwarded:
        addresses = [part.strip() for part in forwarded.split(",") if part.strip()]
        if len(addresses) >= hops:
            return addresses[-hops]
    return request.META.get("REMOTE_ADDR") or None
