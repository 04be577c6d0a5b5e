"""Settings > Billing > Balance: the customer balance per currency and its history.

Admins and Billing contacts only, as every Billing page (Members never see money).
"""

from django.core.paginator import Paginator
from django.shortcuts import render
from django.views.decorators.http import require_safe

from accounts.roles import ADMIN_AND_BILLING
from accounts.tenancy import tenant_view
from billing.balance import balance_history, balances_of

ENTRIES_PER_PAGE = 25


@tenant_view(roles=ADMIN_AND_BILLING, section="billing")
@require_safe
def balance(request):
    """The balance in each currency the organisation ever held credit in, and every movement,
    newest first, with the balance after it. The same few queries for any history."""
    organisation = request.organisation
    balances = balances_of(organisation=organisation)
    page = None
    if balances:
        page = Paginator(balance_history(organisation=organisation), ENTRIES_PER_PAGE).get_page(
            request.GET.get("page")
        )
    return render(
        request,
        "billing/balance.html",
        {
            "balances": balances,
            "several_currencies": len(balances) > 1,
            "page": page,
            "tab": "balance",
        },
    )
