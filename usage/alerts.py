"""Usage alerts (docs/architecture.md#usage-alerts): the fixed 80% and 100% thresholds, those
an Admin adds (10% to 500%, 8 alerts in all), and the opt-in forecast alert.

Every alert is claimed before it is sent: an INSERT ... ON CONFLICT DO NOTHING of its
UsageAlert row (one per organisation, usage month, kind and threshold). The batch or job run
whose INSERT returns the row sends the one email; every other one, however concurrent, sends
nothing. So each threshold, and the forecast, is emailed at most once per usage month.

The check after each ingested batch costs no query of its own until an alert is due: the
thresholds, the forecast opt-in and the alerts already claimed this month come with the
subscription the batch loads anyway (`subscription_for_ingest`). Only an opted-in forecast not
yet sent, with usage still under the limit, costs one query (the projection's window).
"""

from datetime import datetime

from django.contrib.postgres.expressions import ArraySubquery
from django.db import connection, transaction
from django.db.models import Exists, OuterRef

from accounts.audit import Actor, audit_record
from accounts.emails import email_send
from accounts.models import Organisation
from accounts.selectors import billing_recipients
from accounts.services import organisation_lock
from core.errors import ServiceError
from core.links import absolute_url
from subscriptions.models import Subscription
from subscriptions.states import SERVING
from usage.billing import months_usage
from usage.models import AlertSettings, AlertThreshold, UsageAlert
from usage.months import usage_month_of
from usage.overage import overage_amount, overage_units
from usage.projection import Projection, usage_projection

FIXED_PERCENTS = (80, 100)
MIN_PERCENT = 10
MAX_PERCENT = 500
# "Up to 8 in all": the fixed 80% and 100% count, so an organisation adds up to 6.
MAX_ALERTS = 8
MAX_CUSTOM = MAX_ALERTS - len(FIXED_PERCENTS)
FORECAST_PERCENT = 100

PERCENT_RANGE = f"Enter a whole percentage from {MIN_PERCENT} to {MAX_PERCENT}."
TOO_MANY = (
    f"You already have {MAX_ALERTS} usage alerts, the most there can be (80% and 100% and "
    f"{MAX_CUSTOM} of your own). Remove one to add another."
)


# Settings: thresholds and the forecast opt-in -----------------------------------------------


def alert_threshold_add(
    *, organisation: Organisation, actor: Actor, percent: int, now: datetime
) -> AlertThreshold:
    """Add a threshold beside 80% and 100%. The organisation row lock makes "at most 8 in all"
    hold for two tabs at once, and a duplicate a readable refusal rather than an error."""
    if not isinstance(percent, int) or not MIN_PERCENT <= percent <= MAX_PERCENT:
        raise ServiceError(PERCENT_RANGE, field="percent")
    if percent in FIXED_PERCENTS:
        raise ServiceError(
            f"The {percent}% alert is always on: choose another percentage.", field="percent"
        )
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        existing = set(
            AlertThreshold.objects.filter(organisation=organisation).values_list(
                "percent", flat=True
            )
        )
        if percent in existing:
            raise ServiceError(f"There is already a {percent}% alert.", field="percent")
        if len(existing) >= MAX_CUSTOM:
            raise ServiceError(TOO_MANY)
        threshold = AlertThreshold.objects.create(
            organisation=organisation, percent=percent, created_by=actor.user, created_at=now
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="usage_alert.threshold_added",
            target=threshold,
            target_label=f"{percent}% usage alert",
            changes={"percent": {"old": None, "new": percent}},
            now=now,
        )
    return threshold


def alert_threshold_remove(
    *, organisation: Organisation, actor: Actor, threshold: AlertThreshold, now: datetime
) -> None:
    """Remove a threshold the organisation added. An alert it already sent stays listed."""
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        deleted, _ = AlertThreshold.objects.filter(
            organisation=organisation, pk=threshold.pk
        ).delete()
        if not deleted:
            raise ServiceError(f"The {threshold.percent}% alert was already removed.")
        audit_record(
            organisation=organisation,
            actor=actor,
            action="usage_alert.threshold_removed",
            target=threshold,
            target_label=f"{threshold.percent}% usage alert",
            changes={"percent": {"old": threshold.percent, "new": None}},
            now=now,
        )


def forecast_alert_switch(
    *, organisation: Organisation, actor: Actor, on: bool, now: datetime
) -> bool:
    """Switch the forecast alert on or off (docs/architecture.md#usage-alerts). True when
    that changed something: switching to the current state writes nothing, so a resubmitted
    form is harmless."""
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        current = AlertSettings.objects.filter(organisation=organisation).first()
        was_on = current is not None and current.forecast
        if was_on == on:
            return False
        AlertSettings.objects.update_or_create(
            organisation=organisation,
            defaults={"forecast": on, "changed_by": actor.user, "changed_at": now},
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="usage_alert.forecast_on" if on else "usage_alert.forecast_off",
            target_label="Forecast alert",
            changes={"forecast": {"old": was_on, "new": on}},
            now=now,
        )
    return True


# The check after each batch -------------------------------------------------------------------


def _forecast_on():
    return AlertSettings.objects.filter(organisation=OuterRef("organisation_id"), forecast=True)


def _claimed_this_month(now: datetime, **filters):
    return UsageAlert.objects.filter(
        organisation=OuterRef("organisation_id"), month_start__lte=now, month_end__gt=now, **filters
    )


def subscription_for_ingest(*, organisation: Organisation, now: datetime) -> Subscription | None:
    """The subscription a batch counts against, with its plan, organisation and, as
    annotations of the same query, what the alert check needs: the organisation's own
    thresholds (`alert_percents`), the thresholds already claimed in the usage month holding
    `now` (`alerts_claimed`), the forecast opt-in (`forecast_on`) and whether the forecast was
    already sent this month (`forecast_claimed`)."""
    return (
        Subscription.objects.select_related("organisation", "plan")
        .filter(organisation=organisation)
        .annotate(
            alert_percents=ArraySubquery(
                AlertThreshold.objects.filter(organisation=OuterRef("organisation_id")).values(
                    "percent"
                )
            ),
            alerts_claimed=ArraySubquery(
                _claimed_this_month(now, kind=UsageAlert.Kind.THRESHOLD).values("threshold")
            ),
            forecast_on=Exists(_forecast_on()),
            forecast_claimed=Exists(_claimed_this_month(now, kind=UsageAlert.Kind.FORECAST)),
        )
        .first()
    )


def alerts_check(
    *,
    subscription: Subscription,
    month_start: datetime,
    month_end: datetime,
    used: int,
    now: datetime,
) -> None:
    """After a batch: claim and email the thresholds `used` has reached this usage month, then
    the forecast alert if it is due. Runs in the batch's transaction; `subscription` is the one
    `subscription_for_ingest` loaded."""
    limit = subscription.plan.monthly_transactions
    if not limit:
        return
    claimed = set(subscription.alerts_claimed)
    due = [
        percent
        for percent in sorted({*FIXED_PERCENTS, *subscription.alert_percents})
        if used * 100 >= limit * percent and percent not in claimed
    ]
    if due:
        _thresholds_claim_and_send(
            subscription=subscription,
            percents=due,
            month_start=month_start,
            month_end=month_end,
            used=used,
            now=now,
        )
    if subscription.forecast_on and not subscription.forecast_claimed and used < limit:
        organisation = subscription.organisation
        projection = usage_projection(
            organisation_id=organisation.pk,
            anchor_at=subscription.anchor_at,
            zone=organisation.tzinfo,
            used=used,
            month_end=month_end,
            now=now,
        )
        _forecast_claim_and_send(
            subscription=subscription,
            projection=projection,
            month_start=month_start,
            limit=limit,
            now=now,
        )


def _thresholds_claim_and_send(
    *, subscription, percents: list[int], month_start, month_end, used: int, now
) -> None:
    """Claim `percents` in one statement; one email for what this call claimed, naming the
    highest (a batch that jumps past several thresholds sends one email, not several)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_usagealert (organisation_id, month_start, month_end, kind, "
            "threshold, sent_at, transactions) "
            "SELECT %s, %s, %s, %s, t.threshold, %s, %s "
            "FROM unnest(%s::smallint[]) AS t(threshold) "
            "ON CONFLICT (organisation_id, month_start, kind, threshold) DO NOTHING "
            "RETURNING threshold",
            [
                subscription.organisation_id,
                month_start,
                month_end,
                UsageAlert.Kind.THRESHOLD,
                now,
                used,
                percents,
            ],
        )
        won = sorted(row[0] for row in cursor.fetchall())
    if not won:
        return
    organisation = subscription.organisation
    email_send(
        template="usage_alert",
        to=billing_recipients(organisation=organisation),
        context={
            "threshold": won[-1],
            "also_passed": won[:-1],
            "used": used,
            "limit": subscription.plan.monthly_transactions,
            "plan": subscription.plan,
            "subscription_url": absolute_url("subscriptions:settings", organisation.slug),
        },
        organisation=organisation,
    )


def _forecast_claim_and_send(
    *,
    subscription,
    projection: Projection | None,
    month_start: datetime,
    limit: int,
    now: datetime,
) -> bool:
    """Claim and send the forecast alert when the projection reaches the limit while the
    month's usage is still below it; True when this call sent it."""
    if projection is None or projection.used >= limit or projection.projected < limit:
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_usagealert (organisation_id, month_start, month_end, kind, "
            "threshold, sent_at, transactions, projected) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (organisation_id, month_start, kind, threshold) DO NOTHING RETURNING id",
            [
                subscription.organisation_id,
                month_start,
                projection.month_end,
                UsageAlert.Kind.FORECAST,
                FORECAST_PERCENT,
                now,
                projection.used,
                projection.projected,
            ],
        )
        if cursor.fetchone() is None:
            return False
    organisation = subscription.organisation
    plan = subscription.plan
    price = plan.price_for(subscription.currency)
    per_1000 = price.overage_per_1000 if price is not None else 0
    email_send(
        template="usage_forecast",
        to=billing_recipients(organisation=organisation),
        context={
            "projection": projection,
            "percent": projection.percent_of(limit),
            "limit": limit,
            "plan": plan,
            "currency": subscription.currency,
            "overage_per_1000": per_1000,
            "overage_units": overage_units(used=projection.projected, limit=limit),
            "overage_amount": overage_amount(
                used=projection.projected, limit=limit, price_per_1000=per_1000
            ),
            "subscription_url": absolute_url("subscriptions:settings", organisation.slug),
            "alerts_url": absolute_url("usage:alerts", organisation.slug),
        },
        organisation=organisation,
    )
    return True


# The scheduled check of the forecast ----------------------------------------------------------


def forecast_alerts_send(*, now: datetime) -> int:
    """The forecast of every opted-in serving subscription not yet alerted this usage month,
    checked again: the projection's 7-day window moves every day, so it can reach the limit
    without a new batch. Safe to run twice or beside a batch: the claim decides who sends.
    Returns how many alerts were sent."""
    candidates = list(
        Subscription.objects.select_related("organisation", "plan")
        .prefetch_related("plan__prices")
        .filter(status__in=SERVING, plan__monthly_transactions__gt=0)
        .filter(Exists(_forecast_on()))
        .exclude(Exists(_claimed_this_month(now, kind=UsageAlert.Kind.FORECAST)))
        .order_by("pk")
    )
    months = {subscription.pk: usage_month_of(subscription, now) for subscription in candidates}
    usage = months_usage(
        [(subscription.organisation_id, months[subscription.pk][0]) for subscription in candidates]
    )
    sent = 0
    for subscription in candidates:
        month_start, month_end = months[subscription.pk]
        limit = subscription.plan.monthly_transactions
        used = usage.get((subscription.organisation_id, month_start), 0)
        if used >= limit:
            continue  # the 100% alert said it, or is about to
        organisation = subscription.organisation
        projection = usage_projection(
            organisation_id=organisation.pk,
            anchor_at=subscription.anchor_at,
            zone=organisation.tzinfo,
            used=used,
            month_end=month_end,
            now=now,
        )
        with transaction.atomic():
            sent += _forecast_claim_and_send(
                subscription=subscription,
                projection=projection,
                month_start=month_start,
                limit=limit,
                now=now,
            )
    return sent
