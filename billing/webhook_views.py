"""The endpoint Stripe POSTs events to: no login, no CSRF token, the signature instead."""

from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from billing import gateway
from billing.webhooks import stripe_event_receive


@csrf_exempt
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    """Verify the Stripe-Signature, then store and apply the event once.

    400 with {"error": ...} and nothing stored for a missing or wrong signature or a body
    that is not an event; otherwise 200 (Stripe retries anything else), also for event
    types and PaymentIntents we do not know.
    """
    if request.method != "POST":
        response = JsonResponse({"error": "Only POST is allowed."}, status=405)
        response["Allow"] = "POST"
        return response
    try:
        event = gateway.webhook_event(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
    except gateway.WebhookError as error:
        return JsonResponse({"error": error.message}, status=400)
    result = stripe_event_receive(event=event, now=timezone.now())
    if result.status == "processed":
        return JsonResponse({"status": result.status, "outcome": result.outcome})
    return JsonResponse({"status": result.status})
