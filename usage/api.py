"""The machine API for the integration runtime (DESIGN.md section 3).

Authenticated by a per-environment key (`Authorization: Bearer ak_...`), JSON in and out, every
error a JSON body `{"error": "..."}` (plus `errors` for a rejected batch).
"""

from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

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


@csrf_exempt
@require_http_methods(["POST"])
def sync_info(request):
    key = _authenticate(request)
    if key is None:
        return _unauthorized()
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


@require_GET
def flows(request):
    """The environment's ProcessFlows and whether each may run (paused flows may not)."""
    key = _authenticate(request)
    if key is None:
        return _unauthorized()
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


@require_GET
def openapi(request):
    return JsonResponse(openapi_document(request))
