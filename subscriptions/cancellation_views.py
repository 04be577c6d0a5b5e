"""Settings > Subscription > Cancel Subscription (article section 8) and its undo.

Cancel is two steps: the reason, then a confirmation page that says what happens and when,
read from the subscription. Only the final "Cancel Subscription" button changes anything.
"""

from django import forms
from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.formats import date_format
from django.views.decorators.http import require_POST

from accounts.audit import Actor
from accounts.roles import ADMIN_ONLY
from accounts.tenancy import tenant_view
from core.errors import ServiceError
from subscriptions.cancellation import (
    DETAIL_MAX_LENGTH,
    cancellation_refusal,
    data_deletion_at,
    subscription_cancel,
    subscription_cancel_undo,
)
from subscriptions.models import BillingCycle, CancellationReason, PlanChange
from subscriptions.selectors import subscription_for


class CancellationForm(forms.Form):
    reason = forms.ChoiceField(
        label="Why are you cancelling?",
        choices=CancellationReason.choices,
        widget=forms.RadioSelect,
        error_messages={
            "required": "Choose a reason for cancelling.",
            "invalid_choice": "Choose one of the reasons for cancelling.",
        },
    )
    detail = forms.CharField(
        label="Tell us more",
        required=False,
        max_length=DETAIL_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text=f"Optional, except for “{CancellationReason.OTHER.label}”. It helps us "
        f"improve the product.",
    )

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("reason") == CancellationReason.OTHER and not cleaned.get("detail"):
            self.add_error(
                "detail", "Tell us more: describe your reason for cancelling in a few words."
            )
        return cleaned


def _to_settings(request):
    return redirect("subscriptions:settings", org_slug=request.organisation.slug)


def _day(moment) -> str:
    # tenant_view activated the organisation's time zone.
    return date_format(timezone.localtime(moment), "j F Y")


@tenant_view(roles=ADMIN_ONLY, section="subscription")
def cancel(request):
    """GET: the reason form. POST: the confirmation page; POST with confirm=1: cancel."""
    subscription = subscription_for(organisation=request.organisation)
    if subscription is not None:
        subscription.organisation = request.organisation
    refusal = cancellation_refusal(subscription)
    if refusal:
        messages.error(request, refusal)
        return _to_settings(request)
    form = CancellationForm(request.POST if request.method == "POST" else None)
    if request.method != "POST" or not form.is_valid():
        status = 400 if form.errors else 200
        return render(
            request,
            "subscriptions/cancel.html",
            {"form": form, "subscription": subscription},
            status=status,
        )
    if request.POST.get("confirm") != "1":
        downgrade = subscription.plan_changes.filter(status=PlanChange.Status.SCHEDULED).first()
        return render(
            request,
            "subscriptions/cancel_confirm.html",
            {
                "form": form,
                "subscription": subscription,
                "reason_label": CancellationReason(form.cleaned_data["reason"]).label,
                "is_annual": subscription.billing_cycle == BillingCycle.ANNUAL,
                "deletion_at": data_deletion_at(subscription),
                "scheduled_downgrade": downgrade,
            },
        )
    try:
        subscription = subscription_cancel(
            subscription=subscription,
            actor=Actor.from_request(request),
            reason=form.cleaned_data["reason"],
            detail=form.cleaned_data["detail"],
            now=timezone.now(),
        )
    except ServiceError as error:
        if error.field in form.fields:
            form.add_error(error.field, error.message)
            return render(
                request,
                "subscriptions/cancel.html",
                {"form": form, "subscription": subscription},
                status=400,
            )
        messages.error(request, error.message)
        return _to_settings(request)
    ends = _day(subscription.current_period_end)
    messages.success(
        request,
        f"Your subscription is cancelled. No further charges will be made; your service "
        f"continues until {ends}. You can undo the cancellation until then.",
    )
    return _to_settings(request)


# Allowed once ended so that the service, not the read-only guard, says why it is too late.
@tenant_view(roles=ADMIN_ONLY, section="subscription", allow_when_ended=True)
@require_POST
def cancel_undo(request):
    subscription = subscription_for(organisation=request.organisation)
    if subscription is None:
        messages.error(request, "Your organisation has no subscription.")
        return _to_settings(request)
    try:
        subscription = subscription_cancel_undo(
            subscription=subscription, actor=Actor.from_request(request), now=timezone.now()
        )
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            f"Your subscription continues. It renews on {_day(subscription.current_period_end)}.",
        )
    return _to_settings(request)
