"""Settings > Billing > Billing recipients: the extra addresses that get the billing emails.

Admins and Billing contacts only, as every Billing page. The rules and the confirmation link
are accounts' (accounts/billing_recipients.py; docs/architecture.md#decision-billing-recipients):
these views validate the form, call one service and redirect with a message.
"""

from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.audit import Actor
from accounts.billing_recipients import (
    MAX_BILLING_RECIPIENTS,
    billing_recipient_add,
    billing_recipient_remove,
    billing_recipient_resend,
)
from accounts.forms import BillingRecipientForm
from accounts.roles import ADMIN_AND_BILLING
from accounts.selectors import billing_recipient_get, billing_recipient_list
from accounts.tenancy import tenant_view
from core.errors import ServiceError
from core.forms import form_error


def _page(request, form, *, status=200):
    recipients = list(billing_recipient_list(organisation=request.organisation))
    return render(
        request,
        "billing/recipients.html",
        {
            "form": form,
            "recipients": recipients,
            "limit": MAX_BILLING_RECIPIENTS,
            "full": len(recipients) >= MAX_BILLING_RECIPIENTS,
            "tab": "recipients",
            "now": timezone.now(),
        },
        status=status,
    )


@tenant_view(roles=ADMIN_AND_BILLING, section="billing")
def billing_recipients(request):
    """The list with each address's status, and Add (POST)."""
    if request.method != "POST":
        return _page(request, BillingRecipientForm())
    form = BillingRecipientForm(request.POST)
    if form.is_valid():
        try:
            recipient = billing_recipient_add(
                organisation=request.organisation,
                actor=Actor.from_request(request),
                email=form.cleaned_data["email"],
                now=timezone.now(),
            )
        except ServiceError as error:
            form_error(form, error)
        else:
            messages.success(
                request,
                f"We emailed a confirmation link to {recipient.email}. It receives the billing "
                "emails once the link is used.",
            )
            return redirect("billing:recipients", org_slug=request.organisation.slug)
    return _page(request, form, status=400)


@tenant_view(roles=ADMIN_AND_BILLING, section="billing")
@require_POST
def billing_recipient_resend_view(request, recipient_id):
    recipient = billing_recipient_get(organisation=request.organisation, public_id=recipient_id)
    try:
        billing_recipient_resend(
            recipient=recipient, actor=Actor.from_request(request), now=timezone.now()
        )
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"We sent a new confirmation link to {recipient.email}.")
    return redirect("billing:recipients", org_slug=request.organisation.slug)


# Removing stops the emails: allowed even once the subscription has ended and pages are
# read-only (docs/architecture.md#decision-billing-recipients).
@tenant_view(roles=ADMIN_AND_BILLING, section="billing", allow_when_ended=True)
@require_POST
def billing_recipient_remove_view(request, recipient_id):
    recipient = billing_recipient_get(organisation=request.organisation, public_id=recipient_id)
    try:
        billing_recipient_remove(
            recipient=recipient, actor=Actor.from_request(request), now=timezone.now()
        )
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request, f"{recipient.email} was removed. It receives no more billing emails."
        )
    return redirect("billing:recipients", org_slug=request.organisation.slug)
