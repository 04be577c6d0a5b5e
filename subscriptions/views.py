from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from accounts.audit import Actor
from accounts.roles import ADMIN, ADMIN_AND_BILLING, ADMIN_ONLY, ALL_ROLES
from accounts.tenancy import tenant_view
from core.errors import ServiceError
from core.forms import form_error
from subscriptions.forms import ConnectionForm, DowngradeForm, EnvironmentForm, ProcessFlowForm
from subscriptions.models import ProcessFlow
from subscriptions.plan_changes import (
    downgrade_cancel,
    downgrade_flows_to_pause,
    downgrade_refusal,
    downgrade_review,
    downgrade_schedule,
    plan_change_refusal,
    plan_differences,
)
from subscriptions.selectors import (
    PlanLimits,
    connection_list,
    environment_list,
    plan_change_scheduled,
    plan_get_by_code,
    plan_list_lower,
    process_flow_get,
    process_flow_list,
    scheduled_downgrade,
    subscription_for,
    subscription_for_settings,
    usage_counts,
)
from subscriptions.services import (
    connection_create,
    creation_refusal,
    environment_create,
    process_flow_create,
    process_flow_pause,
    process_flow_resume,
)
from subscriptions.states import SERVING

# ProcessFlows ----------------------------------------------------------------------------


def _flows_page(request, *, forms=None, status=200):
    """The ProcessFlows page; `forms` carries a submitted form back with its errors."""
    organisation = request.organisation
    subscription = subscription_for(organisation=organisation)
    environments = list(environment_list(organisation=organisation))
    connections = list(connection_list(organisation=organisation))
    flows = list(process_flow_list(organisation=organisation))
    counts = {
        "environments": len(environments),
        "connections": len(connections),
        "active_process_flows": sum(f.status == ProcessFlow.Status.ACTIVE for f in flows),
    }
    context = {
        "subscription": subscription,
        "limits": PlanLimits.of(subscription.plan) if subscription else None,
        "counts": counts,
        "environments": environments,
        "connections": connections,
        "flows": flows,
        "can_change": request.membership.role == ADMIN,
    }
    if context["can_change"]:
        forms = forms or {}
        context.update(
            environment_form=forms.get("environment") or EnvironmentForm(),
            connection_form=forms.get("connection") or ConnectionForm(organisation=organisation),
            flow_form=forms.get("flow") or ProcessFlowForm(organisation=organisation),
            # Why a form is not offered now (no plan, unpaid, at the limit), or None.
            environment_refusal=creation_refusal(
                subscription, limit="environments", count=counts["environments"]
            ),
            connection_refusal=creation_refusal(
                subscription, limit="connections", count=counts["connections"]
            ),
            flow_refusal=creation_refusal(
                subscription, limit="active_process_flows", count=counts["active_process_flows"]
            ),
            open_form=next(iter(forms), None),
        )
    return render(request, "subscriptions/flows.html", context, status=status)


def _create(request, form, key, service, fields, success):
    """Validate `form`, call `service` with its `fields`, and redirect or show the errors."""
    if form.is_valid():
        try:
            created = service(
                organisation=request.organisation,
                actor=Actor.from_request(request),
                now=timezone.now(),
                **{name: form.cleaned_data[name] for name in fields},
            )
        except ServiceError as error:
            form_error(form, error)
        else:
            messages.success(request, success.format(name=created.name))
            return redirect("subscriptions:flows", org_slug=request.organisation.slug)
    return _flows_page(request, forms={key: form}, status=400)


@tenant_view(roles=ALL_ROLES)
@require_safe
def flows(request):
    return _flows_page(request)


@tenant_view(roles=ADMIN_ONLY)
@require_POST
def environment_create_view(request):
    return _create(
        request,
        EnvironmentForm(request.POST),
        "environment",
        environment_create,
        ["name"],
        "Environment {name} added.",
    )


@tenant_view(roles=ADMIN_ONLY)
@require_POST
def connection_create_view(request):
    return _create(
        request,
        ConnectionForm(request.POST, organisation=request.organisation),
        "connection",
        connection_create,
        ["name", "application", "environment"],
        "Connection {name} added.",
    )


@tenant_view(roles=ADMIN_ONLY)
@require_POST
def flow_create_view(request):
    return _create(
        request,
        ProcessFlowForm(request.POST, organisation=request.organisation),
        "flow",
        process_flow_create,
        ["name", "environment", "source", "target"],
        "ProcessFlow {name} added and running.",
    )


def _flow_action(request, flow_id, service, success):
    flow = process_flow_get(organisation=request.organisation, public_id=flow_id)
    try:
        service(
            organisation=request.organisation,
            actor=Actor.from_request(request),
            now=timezone.now(),
            flow=flow,
        )
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, success.format(name=flow.name))
    return redirect("subscriptions:flows", org_slug=request.organisation.slug)


@tenant_view(roles=ADMIN_ONLY)
@require_POST
def flow_pause_view(request, flow_id):
    return _flow_action(
        request,
        flow_id,
        process_flow_pause,
        "{name} is paused. It stays paused until you resume it.",
    )


@tenant_view(roles=ADMIN_ONLY)
@require_POST
def flow_resume_view(request, flow_id):
    return _flow_action(request, flow_id, process_flow_resume, "{name} is running again.")


# Settings > Subscription -----------------------------------------------------------------


@tenant_view(roles=ADMIN_AND_BILLING, section="subscription")
@require_safe
def settings(request):
    """Settings > Subscription (article sections 2 and 11): plan, cycle, renewal date, limits,
    and the Usage section (this usage month's transactions, overage so far, daily chart)."""
    # Read once with its scheduled change: the upcoming invoice's dry run works on a copy
    # (docs/architecture.md#decision-the-upcoming-invoice-is-the-billing-run-as-a-dry-run).
    subscription = subscription_for_settings(organisation=request.organisation)
    context = {"subscription": subscription}
    if subscription is not None:
        plan = subscription.plan
        subscription.organisation = request.organisation  # already loaded: no query
        counts = usage_counts(organisation=request.organisation)
        # The transactions row and the Usage section come from the usage app's template tag.
        context["limit_rows"] = [
            ("Integrations (app connections)", plan.max_connections, counts["connections"]),
            ("ProcessFlows (active)", plan.max_process_flows, counts["active_process_flows"]),
            ("Environments", plan.max_environments, counts["environments"]),
        ]
        context["paused_flows"] = counts["process_flows"] - counts["active_process_flows"]
        price = plan.price_for(subscription.currency)
        if subscription.scheduled_billing_cycle and price is not None:
            context["scheduled_amount"] = price.amount_for(subscription.scheduled_billing_cycle)
        context["can_change_plan"] = (
            request.membership.role == ADMIN and subscription.status in SERVING
        )
        change = scheduled_downgrade(subscription=subscription)
        if change is not None:
            features, limits = plan_differences(old=change.from_plan, new=change.to_plan)
            context.update(
                scheduled_change=change,
                scheduled_features=features,
                scheduled_limits=limits,
                scheduled_pauses=downgrade_flows_to_pause(subscription=subscription, change=change),
            )
    return render(request, "subscriptions/settings.html", context)


# Settings > Subscription > Change Plan (article section 3, downgrade) --------------------


def _to_subscription(request):
    return redirect("subscriptions:settings", org_slug=request.organisation.slug)


@tenant_view(roles=ADMIN_ONLY, section="subscription")
@require_safe
def change_plan(request):
    """Step 1 of a downgrade: the lower plans, each with its price and what it includes."""
    subscription = subscription_for(organisation=request.organisation)
    if subscription is None:
        return _to_subscription(request)
    context = {
        "subscription": subscription,
        "plans": [
            (plan, plan.price_for(subscription.currency).amount_for(subscription.billing_cycle))
            for plan in plan_list_lower(subscription=subscription)
        ],
        "scheduled_change": plan_change_scheduled(subscription=subscription),
        "refusal": plan_change_refusal(subscription=subscription),
    }
    return render(request, "subscriptions/change_plan.html", context)


def _review_page(request, *, review, form, status=200):
    keep_ids = (
        set(form["keep"].value() or [])
        if form.is_bound
        else {str(flow.public_id) for flow in review.default_keep}
    )
    context = {
        "review": review,
        "subscription": review.subscription,
        "form": form,
        "keep_ids": keep_ids,
        "scheduled_change": plan_change_scheduled(subscription=review.subscription),
    }
    return render(request, "subscriptions/change_plan_review.html", context, status=status)


@tenant_view(roles=ADMIN_ONLY, section="subscription")
def change_plan_review(request, plan_code):
    """Steps 2-4 of a downgrade: what is removed, the flows to keep, Confirm."""
    plan = plan_get_by_code(code=plan_code)
    subscription = subscription_for(organisation=request.organisation)
    if subscription is None:
        raise Http404("No subscription.")
    refusal = downgrade_refusal(subscription=subscription, plan=plan)
    if refusal:
        messages.error(request, refusal)
        return redirect("subscriptions:change_plan", org_slug=request.organisation.slug)
    review = downgrade_review(subscription=subscription, plan=plan)
    if request.method != "POST":
        return _review_page(request, review=review, form=DowngradeForm(flows=review.active_flows))
    form = DowngradeForm(request.POST, flows=review.active_flows)
    if form.is_valid():
        try:
            change = downgrade_schedule(
                subscription=subscription,
                actor=Actor.from_request(request),
                plan=plan,
                keep_flow_ids=form.cleaned_data["keep"] or None,
                now=timezone.now(),
            )
        except ServiceError as error:
            form_error(form, error)
        else:
            messages.success(
                request,
                f"Your plan changes to {plan.name} on "
                f"{timezone.localtime(change.effective_at):%-d %B %Y}, at the renewal. "
                f"Until then nothing changes; you can cancel the change here.",
            )
            return _to_subscription(request)
    return _review_page(request, review=review, form=form, status=400)


@tenant_view(roles=ADMIN_ONLY, section="subscription")
@require_POST
def scheduled_change_cancel(request):
    subscription = subscription_for(organisation=request.organisation)
    if subscription is None:
        raise Http404("No subscription.")
    try:
        change = downgrade_cancel(
            subscription=subscription, actor=Actor.from_request(request), now=timezone.now()
        )
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            f"The change to {change.to_plan.name} is cancelled: you stay on "
            f"{change.from_plan.name}.",
        )
    return _to_subscription(request)
