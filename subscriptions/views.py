from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.audit import Actor
from accounts.roles import ADMIN, ADMIN_AND_BILLING, ADMIN_ONLY, ALL_ROLES
from accounts.tenancy import tenant_view
from billing_portal.errors import ServiceError
from subscriptions.forms import ConnectionForm, EnvironmentForm, ProcessFlowForm
from subscriptions.models import ProcessFlow
from subscriptions.selectors import (
    PlanLimits,
    connection_list,
    environment_list,
    process_flow_get,
    process_flow_list,
    subscription_for,
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


def _form_error(form, error: ServiceError) -> None:
    form.add_error(error.field if error.field in form.fields else None, error.message)


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
            _form_error(form, error)
        else:
            messages.success(request, success.format(name=created.name))
            return redirect("subscriptions:flows", org_slug=request.organisation.slug)
    return _flows_page(request, forms={key: form}, status=400)


@tenant_view(roles=ALL_ROLES)
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
def settings(request):
    """Settings > Subscription (article section 2): plan, cycle, renewal date, limits."""
    subscription = subscription_for(organisation=request.organisation)
    context = {"subscription": subscription}
    if subscription is not None:
        plan = subscription.plan
        counts = usage_counts(organisation=request.organisation)
        context["limit_rows"] = [
            ("Integrations (app connections)", plan.max_connections, counts["connections"]),
            ("ProcessFlows (active)", plan.max_process_flows, counts["active_process_flows"]),
            ("Environments", plan.max_environments, counts["environments"]),
            # Metering of transactions arrives with Sync Info: the limit only, for now.
            ("Transactions per month", plan.monthly_transactions, None),
        ]
        context["paused_flows"] = counts["process_flows"] - counts["active_process_flows"]
        price = plan.price_for(subscription.currency)
        if subscription.scheduled_billing_cycle and price is not None:
            context["scheduled_amount"] = price.amount_for(subscription.scheduled_billing_cycle)
    return render(request, "subscriptions/settings.html", context)
