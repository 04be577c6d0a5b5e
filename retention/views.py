from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils import timezone

from accounts.audit import Actor
from accounts.roles import ADMIN_ONLY
from accounts.tenancy import tenant_view
from core.errors import ServiceError
from retention.forms import DeletionRequestForm
from retention.gdpr_review import deletion_request_create
from retention.selectors import deletion_request_list
from subscriptions.selectors import subscription_for


# GDPR rights do not end with the subscription: the request stays possible once it has ended.
@tenant_view(roles=ADMIN_ONLY, section="privacy", allow_when_ended=True)
def privacy(request):
    """Settings > Privacy: what is kept and for how long, the exports, and Data Deletion
    Request (article section 12)."""
    organisation = request.organisation
    form = DeletionRequestForm(request.POST or None, organisation=organisation)
    if request.method == "POST" and form.is_valid():
        try:
            deletion_request = deletion_request_create(
                organisation=organisation,
                actor=Actor.from_request(request),
                scope=form.cleaned_data["scope"],
                subject_user=form.cleaned_data["subject"],
                reason=form.cleaned_data["reason"],
                now=timezone.now(),
            )
        except ServiceError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            messages.success(
                request,
                f"Deletion request sent ({deletion_request.get_scope_display()}). "
                "We email you when it has been reviewed.",
            )
            return redirect("retention:privacy", org_slug=organisation.slug)
    subscription = subscription_for(organisation=organisation)
    deletion_requests = deletion_request_list(organisation=organisation)
    return render(
        request,
        "retention/privacy.html",
        {
            "form": form,
            "plan": subscription.plan if subscription else None,
            "deletion_requests": deletion_requests,
        },
    )
