"""GET /healthz for load balancers and uptime checks: can this process reach Postgres and Redis?

No sign-in, no session, no writes, nothing cached. 200 when both answer, 503 otherwise; the body
says which check failed and how long each took. The reason of a failure goes to the log (WARNING),
not into the public answer, which names only the kind of error.
"""

import logging
import time
from collections.abc import Callable

import redis
from django.conf import settings
from django.db import connections
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

logger = logging.getLogger(__name__)

# A probe must answer quickly even when Redis hangs rather than refuses.
REDIS_TIMEOUT_SECONDS = 1.0


def _check_postgres() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _redis_url() -> str:
    """The Redis of the cache (sign-in rate limits); in production the broker is the same server."""
    location = settings.CACHES["default"]["LOCATION"]
    if isinstance(location, list | tuple):
        location = location[0]
    return location.split(",")[0]


def _check_redis() -> None:
    client = redis.Redis.from_url(
        _redis_url(),
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    finally:
        client.close()


def _run(name: str, check: Callable[[], None]) -> dict:
    started = time.monotonic()
    try:
        check()
    except Exception as error:  # noqa: BLE001 - any failure means "not healthy"
        logger.warning("Health check %s failed: %s: %s", name, type(error).__name__, error)
        result = {"ok": False, "error": type(error).__name__}
    else:
        result = {"ok": True}
    result["ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


@never_cache
@require_safe
def healthz(request):
    checks = {"postgres": _run("postgres", _check_postgres), "redis": _run("redis", _check_redis)}
    ok = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ok" if ok else "error", "checks": checks}, status=200 if ok else 503
    )
