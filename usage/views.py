"""Sync Info (with its CSV export), the API keys page and the usage alerts page."""

from datetime import timedelta
from urllib.parse import urlencode

from django.contrib import messages
from django.http import StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from accounts.audit import Actor
from accounts.roles import ADMIN_ONLY, ALL_ROLES
from accounts.selectors import billing_recipients
from accounts.tenancy import tenant_view
from core.errors import ServiceError
from core.forms import form_error
from core.keyset import cursor_decode
from subscriptions.selectors import (
    environment_choices,
    process_flow_choices,
    subscription_with_plan,
)
from usage.alerts import (
    FORECAST_PERCENT,
    MAX_ALERTS,
    MAX_CUSTOM,
    alert_threshold_add,
    alert_threshold_remove,
    forecast_alert_switch,
)
from usage.export import sync_info_csv
from usage.forms import (
    AlertThresholdForm,
    ApiKeyForm,
    ForecastAlertForm,
    SyncInfoExportForm,
    SyncInfoFilterForm,
)
from usage.models import SyncInfo, UsageAlert
from usage.selectors import (
    alert_choices,
    alert_threshold_get,
    alerts_sent_now,
    api_key_get,
    api_key_list,
    sync_info_page,
    sync_info_rows,
)
from usage.services import api_key_create, api_key_revoke

FILTERS = ("flow", "status", "date_from", "date_to")
STALE_CURSOR = "That page link is no longer valid, so the newest records are shown."
EXPORT_DAYS_DEFAULT = 30


# Sync Info ------------------------------------------------------------------------------------


def _display_times(rows: list[SyncInfo], zone) -> None:
    """Each row's time as the table shows it, in the organisation's zone: one conversion and
    one strftime per row, the same text as the `date:"c"` and `date:"j M Y, H:i:s"` filters
    gave (which cost ten times as much on a page of 50 rows)."""
    for row in rows:
        local = row.synced_at.astimezone(zone)
        row.synced_at_iso = local.isoformat()
        row.synced_at_text = f"{local:%-d %b %Y, %H:%M:%S}"


def _filter_query(form) -> str:
    """The submitted filters as a query string, for the page links and the export link."""
    if not form.is_bound:
        return ""
    return urlencode({name: form.data.get(name, "") for name in FILTERS if form.data.get(name)})


@tenant_view(roles=ALL_ROLES)
@require_safe
def sync_info(request):
    """Sync Info: every synced record (one transaction each), newest first, with filters."""
    organisation = request.organisation
    flows = list(process_flow_choices(organisation=organisation))
    filtered = any(request.GET.get(name) for name in FILTERS)
    form = SyncInfoFilterForm(request.GET if filtered else None, flows=flows)
    subscription = subscription_with_plan(organisation=organisation)
    context = {
        "form": form,
        "filtered": filtered,
        "filter_query": _filter_query(form),
        "subscription": subscription,
        "time_zone": organisation.time_zone,
    }
    if form.is_bound and not form.is_valid():
        return render(request, "usage/sync_info.html", {**context, "page": None}, status=400)

    filters = {}
    if form.is_bound:
        start, end = form.bounds(organisation.tzinfo)
        filters = {
            "flow": form.cleaned_data["flow"],
            "status": form.cleaned_data["status"],
            "start": start,
            "end": end,
        }
    queryset = sync_info_rows(
        organisation=organisation, subscription=subscription, now=timezone.now(), **filters
    )

    before = after = None
    if request.GET.get("before") or request.GET.get("after"):
        before = cursor_decode(request.GET.get("before", "")) if "before" in request.GET else None
        after = cursor_decode(request.GET.get("after", "")) if "after" in request.GET else None
        if before is None and after is None:
            messages.info(request, STALE_CURSOR)
    page = sync_info_page(queryset, before=before, after=after)
    names = {flow.pk: flow for flow in flows}
    for row in page.rows:
        row.process_flow = names.get(row.flow_id)
    _display_times(page.rows, organisation.tzinfo)
    return render(request, "usage/sync_info.html", {**context, "page": page})


@tenant_view(roles=ALL_ROLES)
@require_safe
def sync_info_export(request):
    """Sync Info > Export: a date range (and optionally the page's filters) as a CSV download.

    Without `export=csv` the form is shown, prefilled from the Sync Info page's filters.
    """
    organisation = request.organisation
    flows = list(process_flow_choices(organisation=organisation))
    subscription = subscription_with_plan(organisation=organisation)
    if request.GET.get("export") != "csv":
        today = timezone.localdate()
        initial = {
            "date_from": today - timedelta(days=EXPORT_DAYS_DEFAULT - 1),
            "date_to": today,
            **{name: request.GET[name] for name in FILTERS if request.GET.get(name)},
        }
        form = SyncInfoExportForm(initial=initial, flows=flows)
        return render(
            request, "usage/sync_info_export.html", {"form": form, "subscription": subscription}
        )
    form = SyncInfoExportForm(request.GET, flows=flows)
    if not form.is_valid():
        return render(
            request,
            "usage/sync_info_export.html",
            {"form": form, "subscription": subscription},
            status=400,
        )
    start, end = form.bounds(organisation.tzinfo)
    flow = form.cleaned_data["flow"]
    response = StreamingHttpResponse(
        sync_info_csv(
            organisation_id=organisation.pk,
            start=start,
            end=end,
            flow_id=flow.pk if flow else None,
            status=form.cleaned_data["status"] or None,
        ),
        content_type="text/csv; charset=utf-8",
    )
    filename = f"sync-info-{form.cleaned_data['date_from']}-{form.cleaned_data['date_to']}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    # Let a reverse proxy pass the chunks on as they come rather than buffer the file.
    response["X-Accel-Buffering"] = "no"
    return response


# API keys -------------------------------------------------------------------------------------


def _api_keys_page(request, *, form=None, status=200):
    organisation = request.organisation
    environments = list(environment_choices(organisation=organisation))
    keys = list(api_key_list(organisation=organisation))
    by_environment = {environment.pk: [] for environment in environments}
    for key in keys:
        by_environment.setdefault(key.environment_id, []).append(key)
    context = {
        "groups": [(environment, by_environment[environment.pk]) for environment in environments],
        "form": form or ApiKeyForm(environments=environment_choices(organisation=organisation)),
        "has_keys": bool(keys),
    }
    return render(request, "usage/api_keys.html", context, status=status)


@tenant_view(roles=ADMIN_ONLY)
@require_safe
def api_keys(request):
    """API keys: the per-environment keys the integration runtime sends Sync Info with."""
    return _api_keys_page(request)


@tenant_view(roles=ADMIN_ONLY)
@require_POST
def api_key_create_view(request):
    """Create key: the plain key is on this response only; it is never stored or shown again."""
    form = ApiKeyForm(
        request.POST, environments=environment_choices(organisation=request.organisation)
    )
    if form.is_valid():
        try:
            key, plain = api_key_create(
                environment=form.cleaned_data["environment"],
                actor=Actor.from_request(request),
                name=form.cleaned_data["name"],
                now=timezone.now(),
            )
        except ServiceError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            response = render(request, "usage/api_key_created.html", {"key": key, "plain": plain})
            response["Cache-Control"] = "private, no-store"
            return response
    return _api_keys_page(request, form=form, status=400)


@tenant_view(roles=ADMIN_ONLY)
def api_key_revoke_view(request, key_id):
    """Revoke: GET asks to confirm, POST revokes (the runtime's next call with it gets 401)."""
    key = api_key_get(organisation=request.organisation, key_id=key_id)
    if request.method != "POST":
        return render(request, "usage/api_key_revoke.html", {"key": key})
    try:
        api_key_revoke(key=key, actor=Actor.from_request(request), now=timezone.now())
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            f"The key {key.name} ({key.prefix}…) is revoked: calls with it are now refused.",
        )
    return redirect("usage:api_keys", org_slug=request.organisation.slug)


# Settings > Subscription > Usage alerts -------------------------------------------------------


def _alerts_page(request, *, form=None, status=200):
    organisation = request.organisation
    now = timezone.now()
    choices = alert_choices(organisation=organisation)
    sent = alerts_sent_now(organisation=organisation, now=now)
    subscription = subscription_with_plan(organisation=organisation)
    limit = subscription.plan.monthly_transactions if subscription is not None else None
    custom = {threshold.percent: threshold for threshold in choices.custom}
    # One row per threshold, the fixed ones (no AlertThreshold) among the organisation's own.
    rows = [
        {
            "percent": percent,
            "threshold": custom.get(percent),
            # The first count that reaches it: used * 100 >= limit * percent.
            "transactions": -(-limit * percent // 100) if limit else None,
            "sent_at": sent.get((UsageAlert.Kind.THRESHOLD, percent)),
        }
        for percent in choices.percents
    ]
    context = {
        "subscription": subscription,
        "choices": choices,
        "rows": rows,
        "forecast_sent_at": sent.get((UsageAlert.Kind.FORECAST, FORECAST_PERCENT)),
        "recipients": billing_recipients(organisation=organisation),
        "form": form or AlertThresholdForm(),
        "max_alerts": MAX_ALERTS,
        "max_custom": MAX_CUSTOM,
    }
    return render(request, "usage/alerts.html", context, status=status)


def _to_alerts(request):
    return redirect("usage:alerts", org_slug=request.organisation.slug)


@tenant_view(roles=ADMIN_ONLY, section="subscription")
@require_safe
def alerts(request):
    """Usage alerts: the thresholds beside 80% and 100%, and the forecast alert (Admins)."""
    return _alerts_page(request)


@tenant_view(roles=ADMIN_ONLY, section="subscription")
@require_POST
def alert_threshold_add_view(request):
    form = AlertThresholdForm(request.POST)
    if form.is_valid():
        try:
            threshold = alert_threshold_add(
                organisation=request.organisation,
                actor=Actor.from_request(request),
                percent=form.cleaned_data["percent"],
                now=timezone.now(),
            )
        except ServiceError as error:
            form_error(form, error)
        else:
            messages.success(request, f"Usage alert at {threshold.percent}% added.")
            return _to_alerts(request)
    return _alerts_page(request, form=form, status=400)


@tenant_view(roles=ADMIN_ONLY, section="subscription")
@require_POST
def alert_threshold_remove_view(request, threshold_id):
    threshold = alert_threshold_get(organisation=request.organisation, public_id=threshold_id)
    try:
        alert_threshold_remove(
            organisation=request.organisation,
            actor=Actor.from_request(request),
            threshold=threshold,
            now=timezone.now(),
        )
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Usage alert at {threshold.percent}% removed.")
    return _to_alerts(request)


@tenant_view(roles=ADMIN_ONLY, section="subscription")
@require_POST
def forecast_alert_view(request):
    form = ForecastAlertForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose whether the forecast alert is on or off.")
        return _alerts_page(request, status=400)
    on = form.cleaned_data["forecast"] == "on"
    forecast_alert_switch(
        organisation=request.organisation,
        actor=Actor.from_request(request),
        on=on,
        now=timezone.now(),
    )
    messages.success(request, "The forecast alert is on." if on else "The forecast alert is off.")
    return _to_alerts(request)
