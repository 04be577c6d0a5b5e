"""Configuration export download (Admins). Sync Info export lives in usage."""

import json

from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.roles import ADMIN_ONLY
from accounts.tenancy import tenant_view
from retention.export import configuration_export


def configuration_export_response(*, organisation, now) -> HttpResponse:
    """The export as a JSON attachment `configuration-<slug>-<date>.json` (organisation's day)."""
    document = configuration_export(organisation=organisation, now=now)
    day = timezone.localtime(now, organisation.tzinfo).date().isoformat()
    response = HttpResponse(
        json.dumps(document, indent=2, ensure_ascii=False),
        content_type="application/json; charset=utf-8",
    )
    response["Content-Disposition"] = (
        f'attachment; filename="configuration-{organisation.slug}-{day}.json"'
    )
    response["Cache-Control"] = "no-store"
    return response


# Readable once the subscription ended too (GET only): that is when it matters most.
@tenant_view(roles=ADMIN_ONLY, section="privacy")
@require_GET
def configuration_export_view(request):
    return configuration_export_response(organisation=request.organisation, now=timezone.now())
