from django.shortcuts import render

from accounts.roles import ADMIN_AND_BILLING
from accounts.tenancy import tenant_view


@tenant_view(roles=ADMIN_AND_BILLING, section="subscription")
def settings(request):
    # Built by a later issue; until then the page says what it will hold.
    return render(request, "settings/not_yet_available.html", {"section_label": "Subscription"})
