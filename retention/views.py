from django.shortcuts import render

from accounts.roles import ADMIN_ONLY
from accounts.tenancy import tenant_view


@tenant_view(roles=ADMIN_ONLY, section="privacy")
def privacy(request):
    # Built by a later issue; until then the page says what it will hold.
    return render(request, "settings/not_yet_available.html", {"section_label": "Privacy"})
