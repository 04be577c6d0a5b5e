"""The organisation pages that join several apps: the Overview (docs/architecture.md#portal)."""

from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from accounts.roles import ALL_ROLES
from accounts.tenancy import tenant_view
from billing.context_processors import account_state
from portal.overview import overview_for


@tenant_view(roles=ALL_ROLES)
@require_safe
def overview(request):
    # The banner's state, read once for the banner and the Overview's "needs your attention".
    state = account_state(request).get("account_state")
    overview = overview_for(membership=request.membership, account_state=state, now=timezone.now())
    return render(
        request,
        "portal/overview.html",
        {
            "overview": overview,
            # billing/upcoming_summary.html's context.
            "subscription": overview.subscription,
            "account_state": state,
        },
    )
