"""Settings > Subscription > Usage history: the last twelve usage months, one month's daily
chart, and the months as CSV. Admins and Billing contacts, as Settings > Subscription."""

from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from accounts.roles import ADMIN_AND_BILLING
from accounts.tenancy import tenant_view
from billing.usage_history import usage_history, usage_history_csv, usage_history_month
from subscriptions.selectors import subscription_for
from usage.history import daily_chart, monthly_chart, usage_month_days


def _subscription(request):
    subscription = subscription_for(organisation=request.organisation)
    if subscription is not None:
        subscription.organisation = request.organisation  # already loaded: no query
    return subscription


@tenant_view(roles=ADMIN_AND_BILLING, section="subscription")
@require_safe
def usage_history_page(request):
    """The months newest first with transactions, limit, percentage and overage billed, and
    a bar chart of them against the limit. The same few queries for any volume."""
    subscription = _subscription(request)
    context = {"subscription": subscription}
    if subscription is not None:
        history = usage_history(subscription=subscription, now=timezone.now())
        oldest, newest = history[-1].month, history[0].month
        context.update(
            history=history,
            chart=monthly_chart([entry.month for entry in history]),
            chart_title=(
                f"Transactions per usage month against the limit, {oldest.start:%-d %b %Y} "
                f"to {newest.end:%-d %b %Y}"
            ),
        )
    return render(request, "billing/usage_history.html", context)


@tenant_view(roles=ADMIN_AND_BILLING, section="subscription")
@require_safe
def usage_history_month_page(request, month):
    """One month of the history with its daily chart; `month` is the local date it starts on.
    A month outside the history (or not a date) is a 404."""
    subscription = _subscription(request)
    if subscription is None:
        raise Http404("No subscription, so no usage month.")
    now = timezone.now()
    history = usage_history(subscription=subscription, now=now)
    entry = usage_history_month(history, month)
    index = history.index(entry)
    days = usage_month_days(month=entry.month, organisation_id=request.organisation.pk, now=now)
    context = {
        "subscription": subscription,
        "entry": entry,
        "chart": daily_chart(days),
        "chart_title": (
            f"Transactions per day, {entry.month.start_text} to {entry.month.end:%-d %b %Y}"
        ),
        "newer": history[index - 1] if index > 0 else None,
        "older": history[index + 1] if index + 1 < len(history) else None,
    }
    return render(request, "billing/usage_month.html", context)


@tenant_view(roles=ADMIN_AND_BILLING, section="subscription")
@require_safe
def usage_history_export(request):
    """The history's months as a CSV download (usage_history_csv says the columns)."""
    subscription = _subscription(request)
    if subscription is None:
        raise Http404("No subscription, so no usage history.")
    history = usage_history(subscription=subscription, now=timezone.now())
    response = HttpResponse(usage_history_csv(history), content_type="text/csv; charset=utf-8")
    oldest, newest = history[-1].month.key, history[0].month.key
    filename = f"usage-history-{request.organisation.slug}-{oldest}-to-{newest}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response
