"""The ops dashboard on the Django admin index (docs/architecture.md#decision-the-ops-dashboard).

Every figure is one aggregate query (GROUP BY), never a loop over organisations, so the page
costs the same with 10 or 10,000 of them; each links to the admin list it counts.
"""

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce
from django.urls import reverse

from accounts.models import Organisation
from billing.models import (
    Dispute,
    Invoice,
    LedgerViolation,
    Payment,
    ReconciliationDifference,
    Refund,
)
from core.calendar_months import month_start
from core.money import format_money
from subscriptions.models import Subscription
from subscriptions.states import FAILING
from support.models import SupportTicket
from usage.models import UsageAlert


@dataclass(frozen=True)
class Figure:
    label: str
    value: str
    url: str
    detail: str = ""


def _url(name: str, **query) -> str:
    base = reverse(f"admin:{name}_changelist")
    return f"{base}?{urlencode(query)}" if query else base


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _amounts(rows) -> str:
    """ "€1,200.00, $3,400.00": the rows' amounts added up per currency."""
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["currency"]] = totals.get(row["currency"], 0) + (row["amount"] or 0)
    return ", ".join(format_money(amount, currency) for currency, amount in sorted(totals.items()))


def _subscription_counts() -> tuple[dict, dict]:
    """Active organisations' subscriptions per status, and the organisations in all and without
    a subscription."""
    by_status = dict(
        Subscription.objects.filter(organisation__status=Organisation.Status.ACTIVE)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    organisations = Organisation.objects.filter(status=Organisation.Status.ACTIVE).aggregate(
        total=Count("id"), without=Count("id", filter=Q(subscription__isnull=True))
    )
    return by_status, organisations


def _status_figures(by_status: dict) -> list[Figure]:
    return [
        Figure(
            label=label,
            value=f"{by_status.get(value, 0):,}",
            url=_url("subscriptions_subscription", status__exact=value),
        )
        for value, label in Subscription.Status.choices
    ]


def _at_risk_figures(by_status: dict) -> list[Figure]:
    """Past due (past due and grace) and suspended: organisations and the money open."""
    failing = (
        Invoice.objects.filter(
            status=Invoice.Status.OPEN, organisation__subscription__status__in=FAILING
        )
        .values("organisation__subscription__status", "currency")
        .annotate(
            organisations=Count("organisation", distinct=True),
            amount=Sum("total") - Sum("amount_paid"),
        )
        .order_by("currency")
    )
    waiting = Payment.objects.filter(
        status=Payment.Status.REQUIRES_ACTION, invoice__status=Invoice.Status.OPEN
    ).aggregate(n=Count("id"), organisations=Count("organisation", distinct=True))
    past_due_rows = [r for r in failing if r["organisation__subscription__status"] != "suspended"]
    suspended_rows = [r for r in failing if r["organisation__subscription__status"] == "suspended"]
    return [
        Figure(
            label="Past due (incl. grace period)",
            value=f"{by_status.get('past_due', 0) + by_status.get('grace', 0):,}",
            detail=(_amounts(past_due_rows) or "nothing") + " open",
            url=_url("billing_dunningcase", status__exact="open"),
        ),
        Figure(
            label="Suspended",
            value=f"{by_status.get('suspended', 0):,}",
            detail=(_amounts(suspended_rows) or "nothing") + " open",
            url=_url("subscriptions_subscription", status__exact="suspended"),
        ),
        # Charges the customer's bank wants them to authenticate (3-D Secure), not done yet.
        Figure(
            label="Payments waiting for the customer's bank",
            value=f"{waiting['n']:,}",
            detail=f"in {waiting['organisations']:,} organisation(s)",
            url=_url("billing_payment", status__exact="requires_action"),
        ),
    ]


def _month_figures(month_start: datetime) -> list[Figure]:
    """Invoices issued (void ones left out) and money collected this calendar month (UTC), per
    currency, counted as the charts count them (portal.ops_figures.money)."""
    counted = [s for s in Invoice.Status.values if s != Invoice.Status.VOID]
    issued = list(
        Invoice.objects.filter(issued_at__gte=month_start, status__in=counted)
        .values("currency")
        .annotate(n=Count("id"), amount=Sum("total"))
        .order_by("currency")
    )
    received = [Payment.Status.SUCCEEDED, Payment.Status.CHARGED_BACK]
    collected = list(
        Payment.objects.annotate(at=Coalesce("completed_at", "created_at"))
        .filter(status__in=received, at__gte=month_start)
        .values("currency")
        .annotate(n=Count("id"), amount=Sum("amount"))
        .order_by("currency")
    )
    return [
        Figure(
            label=f"Invoices issued in {month_start:%B %Y}",
            value=f"{sum(r['n'] for r in issued):,}",
            detail=_amounts(issued) or "—",
            url=_url(
                "billing_invoice",
                issued_at__gte=month_start.isoformat(),
                status__in=",".join(counted),
            ),
        ),
        Figure(
            label=f"Collected in {month_start:%B %Y}",
            value=_count(sum(r["n"] for r in collected), "payment"),
            detail=_amounts(collected) or "—",
            url=_url(
                "billing_payment",
                status__in=",".join(received),
                completed_at__gte=month_start.isoformat(),
            ),
        ),
    ]


def _usage_figure(now: datetime) -> Figure:
    """Organisations at or above 80% of their limit in their current usage month."""
    # Threshold alerts only (not forecasts), from 80% up: organisations add lower ones too.
    above = UsageAlert.objects.filter(
        month_start__lte=now,
        month_end__gt=now,
        kind=UsageAlert.Kind.THRESHOLD,
        threshold__gte=80,
    ).aggregate(
        n=Count("organisation", distinct=True),
        over=Count("organisation", distinct=True, filter=Q(threshold__gte=100)),
    )
    return Figure(
        label="Above 80% of their transaction limit",
        value=f"{above['n']:,}",
        detail=f"{above['over']:,} of them above 100%",
        url=_url("usage_usagealert", current="1"),
    )


def _support_figure() -> Figure:
    tickets = SupportTicket.objects.exclude(status=SupportTicket.Status.CLOSED).aggregate(
        open=Count("id"), urgent=Count("id", filter=Q(urgent=True))
    )
    return Figure(
        label="Open urgent tickets",
        value=f"{tickets['urgent']:,}",
        detail=f"{tickets['open']:,} open in all",
        url=_url("support_supportticket", state="open_urgent"),
    )


def _money_check_figures() -> list[Figure]:
    """Open ledger violations and reconciliation differences."""
    violations = LedgerViolation.objects.filter(resolved_at__isnull=True).aggregate(
        n=Count("id"), organisations=Count("organisation", distinct=True)
    )
    differences = ReconciliationDifference.objects.filter(resolved_at__isnull=True).aggregate(
        n=Count("id"), organisations=Count("organisation", distinct=True)
    )
    return [
        Figure(
            label="Open ledger violations",
            value=f"{violations['n']:,}",
            detail=f"in {violations['organisations']:,} organisation(s)",
            url=_url("billing_ledgerviolation", state="open"),
        ),
        Figure(
            label="Open differences with Stripe",
            value=f"{differences['n']:,}",
            detail=f"in {differences['organisations']:,} organisation(s)",
            url=_url("billing_reconciliationdifference", state="open"),
        ),
    ]


def _money_back_figures() -> list[Figure]:
    """Open disputes (chargebacks) and refunds Stripe has not confirmed yet, with their amounts
    per currency."""
    disputes = list(
        Dispute.objects.exclude(status__in=sorted(Dispute.CLOSED))
        .values("currency")
        .annotate(n=Count("id"), amount=Sum("amount"))
        .order_by("currency")
    )
    refunds = list(
        Refund.objects.filter(status=Refund.Status.PENDING)
        .values("currency")
        .annotate(n=Count("id"), amount=Sum("amount"))
        .order_by("currency")
    )
    return [
        Figure(
            label="Open disputes",
            value=f"{sum(r['n'] for r in disputes):,}",
            detail=(_amounts(disputes) or "nothing") + " disputed",
            url=_url("billing_dispute", state="open"),
        ),
        Figure(
            label="Refunds pending",
            value=f"{sum(r['n'] for r in refunds):,}",
            detail=(_amounts(refunds) or "nothing") + " waiting for Stripe",
            url=_url("billing_creditnote", status__exact="refund_pending"),
        ),
    ]


def ops_dashboard(*, now: datetime) -> dict:
    this_month = month_start(now)
    by_status, organisations = _subscription_counts()
    statuses = _status_figures(by_status)
    at_risk = _at_risk_figures(by_status)
    month = _month_figures(this_month)
    usage = _usage_figure(now)
    support = _support_figure()
    checks = _money_check_figures()
    money_back = _money_back_figures()
    return {
        "checks": checks,
        "money_back": money_back,
        "organisations": organisations["total"],
        "without_subscription": organisations["without"],
        "statuses": statuses,
        "at_risk": at_risk,
        "month": month,
        "usage": usage,
        "support": support,
    }
