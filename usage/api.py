"""The machine API for the integration runtime.

Authenticated by a per-environment key (`Authorization: Bearer ak_...`), JSON in and out, every
error a JSON body `{"error": "..."}` (plus `errors` for a rejected batch). Each key may make
settings.API_RATE_LIMIT requests (default 600 a minute); more get a 429 with Retry-After.
"""

from functools import wraps

from django.conf import settings
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from core import ratelimit
from subscriptions.models import ProcessFlow, Subscription
from subscriptions.states import SERVING
from usage.openapi import openapi_document
from usage.services import api_key_authenticate, sync_info_ingest

MAX_BODY_BYTES = 10 * 1024 * 1024


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _authenticate(request):
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return api_key_authenticate(plain=token.strip(), now=timezone.now())


def _unauthorized() -> JsonResponse:
    response = _error(401, "A valid API key is required: Authorization: Bearer <key>.")
    response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def _too_many(decision: ratelimit.Decision, message: str) -> JsonResponse:
    response = _error(429, f"{message}; try again in {decision.retry_after} seconds.")
    response["Retry-After"] = str(decision.retry_after)
    return response


def _rate_limited(key) -> JsonResponse | None:
    """The 429 for a key past its limit (counted per key, fail-open: core.ratelimit)."""
    decision = ratelimit.hit(f"api-key:{key.pk}", "api", settings.API_RATE_LIMIT)
    if decision.allowed:
        return None
    return _too_many(decision, "Too many requests with this key")


def api_view(*methods: str, authenticated: bool = True):
    """The machine API's view wrapper: only `methods`, the key checked and rate-limited, every
    error JSON. The view gets the key as `key`.

    Django's own method check answers an empty HTML 405, and its CSRF check an HTML 403 to any
    POST; the API is authenticated by its key, not a cookie, so CSRF does not apply.
    """
    allow = ", ".join(methods)

    def decorator(view):
        @csrf_exempt
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                response = _error(405, f"{request.method} is not allowed here; use {allow}.")
                response["Allow"] = allow
                return response
            if authenticated:
                # Requests with bad keys are counted per client address: each costs a lookup.
                refused = ratelimit.peek(request, "api_auth_failed")
                if not refused.allowed:
                    return _too_many(refused, "Too many requests with invalid API keys")
                key = _authenticate(request)
                if key is None:
                    ratelimit.hit(request, "api_auth_failed")
                    return _unauthorized()
                refusal = _rate_limited(key)
                if refusal is not None:
                    return refusal
                kwargs["key"] = key
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


@api_view("POST")
def sync_info(request, *, key):
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        return _error(413, f"The body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB.")
    if request.content_type != "application/json":
        return _error(415, "Send the batch as application/json.")
    result = sync_info_ingest(
        key=key,
        idempotency_key=request.headers.get("Idempotency-Key", ""),
        body=request.body,
        now=timezone.now(),
    )
    return JsonResponse(result.body, status=result.status_code)


@csrf_exempt
def not_found(request, path=""):
    """Any other path under /api/: a JSON 404 like every other API error."""
    return _error(404, "No such API endpoint; the API is described at /api/v1/openapi.json.")


@api_view("GET")
def flows(request, *, key):
    """The environment's ProcessFlows and whether each may run (paused flows may not)."""
    subscription = Subscription.objects.filter(organisation_id=key.organisation_id).first()
    serving = subscription is not None and subscription.status in SERVING
    rows = ProcessFlow.objects.filter(
        organisation_id=key.organisation_id, environment_id=key.environment_id
    ).order_by("created_at", "id")
    return JsonResponse(
        {
            "environment": key.environment.name,
            "flows": [
                {
                    "id": str(flow.public_id),
                    "name": flow.name,
                    "status": flow.status,
                    "pause_reason": flow.pause_reason or None,
                    "may_run": serving and flow.status == ProcessFlow.Status.ACTIVE,
                }
                for flow in rows
            ],
        }
    )


@api_view("GET", authenticated=False)
def openapi(request):
    return JsonResponse(openapi_document(request))
