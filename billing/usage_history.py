"""Usage history (Settings > Subscription > Usage history): the last twelve usage months with
what each cost in overage and the invoice that billed it.

The months and their transactions are usage's (usage.history, from the per-day counters); what
was billed is ours (OverageCharge). usage may not import billing, so the page is billing's and
joins the two (docs/architecture.md#usage-history).
"""

import csv
import io
import re
from dataclasses import dataclass, replace
from datetime import date, datetime

from django.http import Http404

from billing.models import OverageCharge
from core.money import money_decimal
from subscriptions.models import Subscription
from usage.history import UsageMonth, usage_months
from usage.overage import overage_amount, overage_units


class OverageState:
    BILLED = "billed"  # an OverageCharge: on an invoice
    SO_FAR = "so_far"  # the current month is over its limit: billed when it closes
    NOT_BILLED = "not_billed"  # a closed month over its limit that no invoice carries yet
    NONE = "none"  # at or under the limit


@dataclass(frozen=True)
class HistoryMonth:
    month: UsageMonth  # its limit is the one the overage was billed on, when it was
    currency: str
    state: str  # OverageState
    overage_units: int
    # Minor units: billed, or for the current month what it comes to so far; None for a closed
    # month not billed yet (its price is the one of the plan when the billing run gets to it).
    overage_amount: int | None
    invoice_number: str  # "" unless billed


def _month_key(value: str) -> date | None:
    """ "2026-11-01" (only that form: no week dates, no "20261101"), or None."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def usage_history(*, subscription: Subscription, now: datetime) -> list[HistoryMonth]:
    """The subscription's last twelve usage months, newest first, each with its overage.

    A billed month shows the OverageCharge as invoiced: its transactions, the limit it was
    billed on and the amount. The current month over its limit shows the overage so far at the
    current plan's rate (as the Usage section does). Three queries whatever the volume (usage
    counters, plan changes, overage charges with their invoice numbers); expects the
    subscription as subscriptions.selectors.subscription_for loads it, organisation set.
    """
    months = usage_months(subscription=subscription, now=now)
    charges = {
        charge.month_start: charge
        for charge in OverageCharge.objects.filter(
            subscription=subscription, month_start__in=[m.start for m in months]
        )
        .select_related("invoice")
        .only(
            "month_start",
            "transactions",
            "transaction_limit",
            "units",
            "amount",
            "currency",
            "invoice__number",
        )
    }
    price = subscription.plan.price_for(subscription.currency)
    per_1000 = price.overage_per_1000 if price is not None else 0
    history = []
    for month in months:
        charge = charges.get(month.start)
        if charge is not None:
            history.append(
                HistoryMonth(
                    month=replace(
                        month, transactions=charge.transactions, limit=charge.transaction_limit
                    ),
                    currency=charge.currency,
                    state=OverageState.BILLED,
                    overage_units=charge.units,
                    overage_amount=charge.amount,
                    invoice_number=charge.invoice.number,
                )
            )
            continue
        units = overage_units(used=month.transactions, limit=month.limit)
        state, amount = OverageState.NONE, 0
        if units and month.is_current:
            state = OverageState.SO_FAR
            amount = overage_amount(
                used=month.transactions, limit=month.limit, price_per_1000=per_1000
            )
        elif units:
            state, amount = OverageState.NOT_BILLED, None
        history.append(
            HistoryMonth(
                month=month,
                currency=subscription.currency,
                state=state,
                overage_units=units,
                overage_amount=amount,
                invoice_number="",
            )
        )
    return history


def usage_history_month(history: list[HistoryMonth], key: str) -> HistoryMonth:
    """The month of `history` that starts on the local date `key` ("2026-11-01"); a 404 for a
    malformed date or one that starts no month of the history (another subscription's month,
    a month older than the history, a future one)."""
    day = _month_key(key)
    for entry in history:
        if day is not None and entry.month.start.date() == day:
            return entry
    raise Http404("No usage month of this subscription starts on that date.")


# CSV ------------------------------------------------------------------------------------------

CSV_HEADER = (
    "month_start",
    "month_end",
    "transactions",
    "limit",
    "percent",
    "overage_units",
    "overage_amount",
    "currency",
    "invoice_number",
    "status",
)
CSV_STATUS = {
    OverageState.BILLED: "billed",
    OverageState.SO_FAR: "so far",
    OverageState.NOT_BILLED: "not billed yet",
    OverageState.NONE: "no overage",
}


def _status(entry: HistoryMonth) -> str:
    if entry.state == OverageState.NONE and entry.month.is_current:
        return "no overage so far"
    return CSV_STATUS[entry.state]


def usage_history_csv(history: list[HistoryMonth]) -> str:
    """The monthly figures as CSV, newest first. Month start and end are local dates, the end
    being the day the next month starts, as on invoices ("1 Nov – 1 Dec"); amounts are
    decimals in the currency's major unit; the status says whether the overage is invoiced."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for entry in history:
        month = entry.month
        writer.writerow(
            (
                month.start.date().isoformat(),
                month.end.date().isoformat(),
                month.transactions,
                month.limit,
                month.percent,
                entry.overage_units,
                "" if entry.overage_amount is None else money_decimal(entry.overage_amount),
                entry.currency,
                entry.invoice_number,
                _status(entry),
            )
        )
    return out.getvalue()
