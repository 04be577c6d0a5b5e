"""Money invariants: every cent accounted for (docs/architecture.md#billing).

Each rule is one function `check_<rule>(*, now, organisation_ids)` yielding Violations, its rule
in the docstring. `ledger_check` runs them all, for every active organisation or only the given
ones; `ledger_record` keeps the nightly result for ops (LedgerViolation): new findings open a
row, findings that are gone close theirs. Every rule reads with a few set-based queries, never
one per organisation, so the nightly run stays linear in the data.

Amounts are integers in minor units by construction (BigIntegerField everywhere); the rules
below check the arithmetic between them.
"""

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Count, F, Q, Sum

from accounts.models import Organisation
from billing.models import (
    BalanceEntry,
    CarriedCharge,
    CreditNote,
    CreditNoteLine,
    CreditNoteSequence,
    Dispute,
    DunningCase,
    DunningStep,
    Invoice,
    InvoiceLine,
    LedgerViolation,
    OverageCharge,
    Payment,
    Refund,
)
from billing.tax import TaxDecision
from core.money import format_money
from subscriptions.models import BillingCycle, PaymentMethodKind, PlanChange, Subscription
from subscriptions.states import FAILING, RENEWING
from usage.models import UsageCounter
from usage.months import usage_month_of
from usage.overage import overage_units

# The billing run goes every 15 minutes: a period still un-invoiced an hour after it ended is
# late, not merely pending.
RENEWAL_LATENESS = timedelta(hours=1)
# Usage counters are compared with stored Sync Info over closed days this far back: all of it
# is inside every plan's retention (the shortest is 30 days), so nothing was purged yet.
USAGE_DAYS_NIGHTLY = 3
USAGE_DAYS_FULL = 28


@dataclass(frozen=True)
class Violation:
    rule: str
    organisation_id: int | None
    subject: str  # stable across runs: "invoice:INV-2026-000101", "subscription:12", ...
    message: str


def _scope(queryset, organisation_ids, field="organisation_id"):
    if organisation_ids is None:
        return queryset
    return queryset.filter(**{f"{field}__in": organisation_ids})


def _money(amount: int, currency: str) -> str:
    return format_money(amount, currency)


# 1. Periods ---------------------------------------------------------------------------------


def check_periods(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Every subscription period from its first invoice until now is invoiced exactly once.

    The subscription's period invoices (kind "subscription", not void), by period start, tile
    time without a gap or an overlap: each starts where the one before ended (or, after an
    ended subscription, later, with the first invoice of the new term), and the last is the
    subscription's current period. This holds across upgrades (their prorated invoices are
    of kind "upgrade" and do not move the period), downgrades and cycle switches (which take
    effect at a renewal: the new period starts where the old one ended), suspension (no renewal
    while suspended; the billing run catches up afterwards, one invoice per missed period) and
    cancellation (no invoice after the last period). A renewing subscription whose current
    period ended more than an hour ago without its next invoice is late.
    """
    subscriptions = {
        s.pk: s
        for s in _scope(
            Subscription.objects.filter(organisation__status=Organisation.Status.ACTIVE),
            organisation_ids,
        ).only(
            "pk",
            "organisation_id",
            "status",
            "current_period_start",
            "current_period_end",
            "cancel_at_period_end",
        )
    }
    periods = _invoiced_periods(list(subscriptions))
    for subscription_id, subscription in subscriptions.items():
        yield from _period_findings(subscription, periods.get(subscription_id, []), now=now)


def _invoiced_periods(subscription_ids: list[int]) -> dict[int, list[tuple]]:
    """Per subscription, its period invoices (number, start, end, starts_term) by period start."""
    periods = defaultdict(list)
    rows = (
        Invoice.objects.filter(
            subscription_id__in=subscription_ids,
            kind=Invoice.Kind.SUBSCRIPTION,
        )
        .exclude(status=Invoice.Status.VOID)
        .order_by("subscription_id", "period_start", "id")
        .values_list("subscription_id", "number", "period_start", "period_end", "starts_term")
    )
    for subscription_id, number, start, end, starts_term in rows:
        periods[subscription_id].append((number, start, end, starts_term))
    return periods


def _period_findings(subscription, invoiced: list[tuple], *, now: datetime) -> Iterator[Violation]:
    """One subscription's period invoices against each other, its current period and `now`."""
    subject = f"subscription:{subscription.pk}"

    def found(message):
        return Violation("periods", subscription.organisation_id, subject, message)

    if not invoiced:
        if subscription.status != Subscription.Status.INCOMPLETE:
            yield found("The subscription has no period invoice at all.")
        return
    for (number_a, _, end_a, _), (number_b, start_b, _, starts_term_b) in zip(
        invoiced, invoiced[1:], strict=False
    ):
        if start_b < end_a:
            yield found(
                f"{number_a} and {number_b} overlap: {number_b} starts "
                f"{start_b:%Y-%m-%d %H:%M}, before {number_a} ends."
            )
        elif start_b > end_a and not starts_term_b:
            yield found(
                f"Gap between {number_a} (ends {end_a:%Y-%m-%d %H:%M}) and {number_b} "
                f"(starts {start_b:%Y-%m-%d %H:%M})."
            )
    number, start, end, _ = invoiced[-1]
    if (start, end) != (subscription.current_period_start, subscription.current_period_end):
        yield found(
            f"The current period {subscription.current_period_start:%Y-%m-%d} – "
            f"{subscription.current_period_end:%Y-%m-%d} is not the last invoiced one "
            f"({number}: {start:%Y-%m-%d} – {end:%Y-%m-%d})."
        )
    if (
        subscription.status in RENEWING
        and not subscription.cancel_at_period_end
        and subscription.current_period_end <= now - RENEWAL_LATENESS
    ):
        yield found(
            f"The period ended {subscription.current_period_end:%Y-%m-%d %H:%M} and the "
            "next one is not invoiced."
        )


# 2. Invoice arithmetic ----------------------------------------------------------------------


def check_invoice_totals(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Each invoice's lines add up to its subtotal, and each line is quantity × unit amount;
    the tax follows the rule recorded on the invoice (standard: subtotal × rate, rounded half
    up; reverse charge and none: no tax at a 0 rate); the total is subtotal + tax; no amount is
    negative."""
    invoices = _scope(Invoice.objects.all(), organisation_ids).annotate(
        lines_sum=Sum("lines__amount"), line_count=Count("lines")
    )
    for invoice in invoices.values(
        "organisation_id",
        "number",
        "currency",
        "subtotal",
        "tax_amount",
        "total",
        "tax_rule",
        "tax_rate_bp",
        "lines_sum",
        "line_count",
    ):
        yield from _invoice_arithmetic_findings(invoice)
    yield from _line_arithmetic_findings(organisation_ids)


def _invoice_arithmetic_findings(invoice: dict) -> Iterator[Violation]:
    """One invoice's lines sum, tax, total and signs (the invoice as a `values()` row)."""
    subject = f"invoice:{invoice['number']}"

    def found(message):
        return Violation("invoice_totals", invoice["organisation_id"], subject, message)

    currency = invoice["currency"]
    if invoice["line_count"] == 0:
        yield found("The invoice has no lines.")
    elif invoice["lines_sum"] != invoice["subtotal"]:
        yield found(
            f"Lines add up to {_money(invoice['lines_sum'], currency)}, the subtotal says "
            f"{_money(invoice['subtotal'], currency)}."
        )
    if invoice["tax_rule"] == "standard":
        expected = TaxDecision(rule="standard", rate_bp=invoice["tax_rate_bp"], name="").amount(
            invoice["subtotal"]
        )
    elif invoice["tax_rule"] in ("reverse_charge", "none"):
        expected = 0
        if invoice["tax_rate_bp"]:
            yield found(
                f"Tax rule {invoice['tax_rule']} with a rate of {invoice['tax_rate_bp']} bp."
            )
    else:
        expected = None
        yield found(f"Unknown tax rule {invoice['tax_rule']!r}.")
    if expected is not None and invoice["tax_amount"] != expected:
        yield found(
            f"Tax is {_money(invoice['tax_amount'], currency)}; the {invoice['tax_rule']} "
            f"rule gives {_money(expected, currency)}."
        )
    if invoice["total"] != invoice["subtotal"] + invoice["tax_amount"]:
        yield found(
            f"Total {_money(invoice['total'], currency)} is not subtotal + tax "
            f"({_money(invoice['subtotal'] + invoice['tax_amount'], currency)})."
        )
    if min(invoice["subtotal"], invoice["tax_amount"], invoice["total"]) < 0:
        yield found("A negative amount.")


def _line_arithmetic_findings(organisation_ids) -> Iterator[Violation]:
    """Invoice lines whose amount is not quantity × unit amount."""
    bad_lines = _scope(
        InvoiceLine.objects.exclude(amount=F("quantity") * F("unit_amount")),
        organisation_ids,
        "invoice__organisation_id",
    ).values_list("invoice__organisation_id", "invoice__number", "position", "amount")
    for organisation_id, number, position, amount in bad_lines:
        yield Violation(
            "invoice_totals",
            organisation_id,
            f"invoice:{number}",
            f"Line {position}: amount {amount} is not quantity × unit amount.",
        )


# 3. Numbering ---------------------------------------------------------------------------------


def check_numbering(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Invoice numbers are unique and gapless: INV-<year>-000001, 000002, ... with none missing
    and none twice, up to the year's sequence. Numbering is global, so this rule always looks at
    every invoice (its findings carry no organisation)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH numbers AS (
                SELECT split_part(number, '-', 2)::int AS year,
                       split_part(number, '-', 3)::int AS n
                FROM billing_invoice
                WHERE number ~ '^INV-[0-9]{4}-[0-9]+$'
            ), years AS (
                SELECT year, count(*) AS issued, count(DISTINCT n) AS distinct_numbers,
                       max(n) AS highest
                FROM numbers GROUP BY year
            )
            SELECT y.year, y.issued, y.distinct_numbers, y.highest,
                   coalesce(s.last_number, 0)
            FROM years y LEFT JOIN billing_invoicesequence s ON s.year = y.year
            ORDER BY y.year
            """
        )
        years = cursor.fetchall()
        cursor.execute("SELECT number FROM billing_invoice WHERE number !~ '^INV-[0-9]{4}-[0-9]+$'")
        malformed = [row[0] for row in cursor.fetchall()]
    for number in malformed:
        yield Violation("numbering", None, f"invoice:{number}", f"{number} is not INV-YYYY-NNNNNN.")
    for year, issued, distinct_numbers, highest, last_number in years:
        subject = f"numbering:{year}"
        if distinct_numbers != issued:
            yield Violation(
                "numbering",
                None,
                subject,
                f"{issued - distinct_numbers} duplicate number(s) in {year}.",
            )
        if highest != distinct_numbers:
            yield Violation(
                "numbering",
                None,
                subject,
                f"{highest - distinct_numbers} number(s) missing in {year} (highest {highest}, "
                f"{distinct_numbers} issued).",
            )
        if highest != last_number:
            yield Violation(
                "numbering",
                None,
                subject,
                f"The {year} sequence is at {last_number}, the highest invoice is {highest}.",
            )


# 4. Payments ----------------------------------------------------------------------------------


def check_payments(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Each paid invoice is settled: the money paid, the customer balance applied and the
    credit notes that reduced what was owed add up to its total; amount_paid is what the
    successful payments brought in, less what lost disputes took back; a void invoice has no
    successful payment, nor has an open one unless a lost dispute reopened it; no invoice has
    two successful payments; every payment belongs to an invoice of its own organisation, in
    its currency."""
    invoices = _scope(Invoice.objects.all(), organisation_ids).annotate(
        succeeded=Count("payments", filter=Q(payments__status=Payment.Status.SUCCEEDED)),
        paid_sum=Sum(
            "payments__amount",
            filter=Q(payments__status__in=(Payment.Status.SUCCEEDED, Payment.Status.CHARGED_BACK)),
        ),
    )
    lost = _lost_to_disputes(organisation_ids)
    for invoice in invoices.values(
        "pk",
        "organisation_id",
        "number",
        "status",
        "currency",
        "total",
        "amount_paid",
        "credit_applied",
        "amount_credited_unpaid",
        "succeeded",
        "paid_sum",
    ):
        subject = f"invoice:{invoice['number']}"
        taken_back = lost.get(invoice["pk"], 0)
        paid = (invoice["paid_sum"] or 0) - taken_back
        currency = invoice["currency"]
        settled = invoice["amount_paid"] + invoice["credit_applied"]
        settled += invoice["amount_credited_unpaid"]

        def found(message, subject=subject, invoice=invoice):
            return Violation("payments", invoice["organisation_id"], subject, message)

        if invoice["succeeded"] > 1:
            yield found(f"{invoice['succeeded']} successful payments for one invoice.")
        if invoice["status"] == Invoice.Status.PAID and settled != invoice["total"]:
            yield found(
                f"Paid, but payments ({_money(invoice['amount_paid'], currency)}), balance "
                f"applied ({_money(invoice['credit_applied'], currency)}) and credit "
                f"({_money(invoice['amount_credited_unpaid'], currency)}) settle "
                f"{_money(settled, currency)} of {_money(invoice['total'], currency)}."
            )
        if invoice["status"] == Invoice.Status.VOID and paid:
            yield found(f"Void, yet {_money(paid, currency)} was paid.")
        if invoice["status"] == Invoice.Status.OPEN and invoice["succeeded"] and not taken_back:
            yield found(f"Open, yet {_money(paid, currency)} was paid.")
        if invoice["amount_paid"] != paid:
            yield found(
                f"amount_paid says {_money(invoice['amount_paid'], currency)}, successful "
                f"payments add up to {_money(paid, currency)}."
            )
    strays = _scope(Payment.objects.all(), organisation_ids).filter(
        ~Q(organisation_id=F("invoice__organisation_id")) | ~Q(currency=F("invoice__currency"))
    )
    for organisation_id, key, number in strays.values_list(
        "organisation_id", "idempotency_key", "invoice__number"
    ):
        yield Violation(
            "payments",
            organisation_id,
            f"payment:{key}",
            f"Payment {key} is for {number}, an invoice of another organisation or currency.",
        )


def _lost_to_disputes(organisation_ids) -> dict[int, int]:
    """Per invoice, what lost disputes took back."""
    return dict(
        _scope(Dispute.objects.filter(lost_applied_at__isnull=False), organisation_ids)
        .values("invoice_id")
        .annotate(total=Sum("amount"))
        .values_list("invoice_id", "total")
    )


# 5. Upgrade quotes ------------------------------------------------------------------------------


def check_upgrade_quotes(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Every upgrade invoice equals, to the cent, the quote shown before confirming, which is
    stored on its PlanChange: subtotal, tax and total. An upgrade quoted under the minimum
    charge is carried instead: its carried amount and the renewal line that bills it equal the
    stored quote subtotal (the tax is the renewal's), it has no upgrade invoice of its own, and
    it is still owed only while the subscription can renew (once it ended, it is waived)."""
    rows = _scope(Invoice.objects.filter(kind=Invoice.Kind.UPGRADE), organisation_ids).values_list(
        "organisation_id",
        "number",
        "currency",
        "subtotal",
        "tax_amount",
        "total",
        "plan_change__quote_subtotal",
        "plan_change__quote_tax",
        "plan_change__quote_total",
        "plan_change_id",
    )
    for (
        organisation_id,
        number,
        currency,
        subtotal,
        tax,
        total,
        q_sub,
        q_tax,
        q_total,
        change,
    ) in rows:
        if change is None:
            yield Violation(
                "upgrade_quotes",
                organisation_id,
                f"invoice:{number}",
                "An upgrade invoice without its plan change (quote).",
            )
        elif (subtotal, tax, total) != (q_sub, q_tax, q_total):
            yield Violation(
                "upgrade_quotes",
                organisation_id,
                f"invoice:{number}",
                f"Invoiced {_money(total, currency)} ({_money(subtotal, currency)} + "
                f"{_money(tax, currency)} tax); the quote shown was "
                f"{_money(q_total or 0, currency)} ({_money(q_sub or 0, currency)} + "
                f"{_money(q_tax or 0, currency)} tax).",
            )
    yield from _carried_upgrade_findings(now=now, organisation_ids=organisation_ids)


def _carried_upgrade_findings(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Upgrades carried to the next invoice against their stored quote (one query, plus one for
    the upgrade invoices of carried changes)."""
    carried = list(
        _scope(CarriedCharge.objects.filter(kind=CarriedCharge.Kind.UPGRADE), organisation_ids)
        .values_list(
            "organisation_id",
            "pk",
            "plan_change_id",
            "plan_change__quote_subtotal",
            "amount",
            "currency",
            "line__amount",
            "line__invoice__number",
            "waived_at",
            "subscription__status",
            "subscription__cancel_at_period_end",
            "subscription__current_period_end",
        )
        .order_by("pk")
    )
    invoiced = set(
        Invoice.objects.filter(
            kind=Invoice.Kind.UPGRADE, plan_change_id__in=[row[2] for row in carried]
        )
        .exclude(status=Invoice.Status.VOID)
        .values_list("plan_change_id", flat=True)
    )
    for (
        organisation_id,
        pk,
        change,
        quoted,
        amount,
        currency,
        line_amount,
        number,
        waived_at,
        status,
        cancelled,
        period_end,
    ) in carried:
        subject = f"plan_change:{change}" if change else f"carried:{pk}"

        def found(message, subject=subject, organisation_id=organisation_id):
            return Violation("upgrade_quotes", organisation_id, subject, message)

        if change is None:
            yield found("A carried upgrade without its plan change (quote).")
            continue
        if amount != quoted:
            yield found(
                f"Carried {_money(amount, currency)}; the quote was {_money(quoted, currency)}."
            )
        if number is not None and line_amount != quoted:
            yield found(
                f"{number} carried {_money(line_amount, currency)} for the upgrade; the quote "
                f"was {_money(quoted, currency)}."
            )
        if change in invoiced:
            yield found(
                "The upgrade is carried to the next invoice and also has its own upgrade invoice."
            )
        ended = status == Subscription.Status.ENDED or (
            cancelled and period_end <= now - RENEWAL_LATENESS
        )
        if number is None and waived_at is None and ended:
            yield found(
                f"{_money(amount, currency)} carried to the next invoice, but the subscription "
                "has ended: still owed."
            )


# 6. Usage and overage ----------------------------------------------------------------------------


def check_overage(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Overage billed for a closed usage month equals what the usage counters and the plan rate
    give: its transactions are the month's counters, its units the started thousands above the
    limit, its amount units × rate, and its invoice carries exactly that amount as an overage
    line for that month. A usage month closed over an hour ago, over its limit, with no overage
    billed is missing, when the subscription renews normally (a suspended one is billed when it
    resumes, a cancelled one when the cancellation is undone or the subscription ends) or has
    ended (its final invoices), and its plan has not changed since (the current plan's limit
    then applies)."""
    # Organisations deleted after cancellation keep their invoices but not their counters.
    charges = _scope(
        OverageCharge.objects.filter(organisation__status=Organisation.Status.ACTIVE),
        organisation_ids,
    ).select_related("invoice")
    counters = _monthly_usage(organisation_ids)
    overage_lines = _overage_on_invoices(organisation_ids)
    billed = set()
    for charge in charges:
        billed.add((charge.subscription_id, charge.month_start))
        yield from _overage_charge_findings(charge, counters, overage_lines)
    yield from _unbilled_overage_findings(
        now=now, organisation_ids=organisation_ids, counters=counters, billed=billed
    )


def _monthly_usage(organisation_ids) -> dict[tuple, int]:
    """Transactions counted per (organisation, usage month start)."""
    return {
        (organisation_id, month_start): total
        for organisation_id, month_start, total in _scope(
            UsageCounter.objects.all(), organisation_ids
        )
        .values_list("organisation_id", "month_start")
        .annotate(total=Sum("transactions"))
        .values_list("organisation_id", "month_start", "total")
    }


def _overage_on_invoices(organisation_ids) -> dict[tuple, int]:
    """Overage line amounts per (invoice, usage month start)."""
    overage_lines = defaultdict(int)
    for invoice_id, start, amount in _scope(
        InvoiceLine.objects.filter(kind=InvoiceLine.Kind.OVERAGE),
        organisation_ids,
        "invoice__organisation_id",
    ).values_list("invoice_id", "period_start", "amount"):
        overage_lines[(invoice_id, start)] += amount
    return overage_lines


def _overage_charge_findings(charge, counters: dict, overage_lines: dict) -> Iterator[Violation]:
    """One overage charge against the counters, the plan arithmetic and its invoice line."""
    subject = f"overage:{charge.subscription_id}:{charge.month_start:%Y-%m-%d}"

    def found(message):
        return Violation("overage", charge.organisation_id, subject, message)

    used = counters.get((charge.organisation_id, charge.month_start), 0)
    if charge.transactions != used:
        yield found(f"Billed {charge.transactions:,} transactions; the counters say {used:,}.")
    units = overage_units(used=charge.transactions, limit=charge.transaction_limit)
    if charge.units != units:
        yield found(
            f"Billed {charge.units} units; {charge.transactions:,} over "
            f"{charge.transaction_limit:,} is {units}."
        )
    if charge.amount != charge.units * charge.unit_amount:
        yield found(f"Amount {_money(charge.amount, charge.currency)} is not units × rate.")
    on_invoice = overage_lines.get((charge.invoice_id, charge.month_start), 0)
    if on_invoice != charge.amount:
        yield found(
            f"{charge.invoice.number} carries {_money(on_invoice, charge.currency)} of "
            f"overage for the month, not {_money(charge.amount, charge.currency)}."
        )


def _unbilled_overage_findings(
    *, now: datetime, organisation_ids, counters: dict, billed: set
) -> Iterator[Violation]:
    """Closed months over the limit that nothing billed."""
    months_by_organisation = defaultdict(list)
    for (organisation_id, month_start), used in counters.items():
        months_by_organisation[organisation_id].append((month_start, used))
    changed = set(
        PlanChange.objects.filter(status=PlanChange.Status.APPLIED).values_list(
            "subscription_id", flat=True
        )
    )
    # An ended subscription owes its unbilled months too (its final invoices); a cancelled one
    # that has not ended is held until it renews again or ends.
    subscriptions = _scope(
        Subscription.objects.filter(
            Q(status__in=RENEWING, cancel_at_period_end=False)
            | Q(status=Subscription.Status.ENDED),
            organisation__status=Organisation.Status.ACTIVE,
        ).select_related("plan", "organisation"),
        organisation_ids,
    )
    for subscription in subscriptions:
        if subscription.pk in changed:
            continue
        current_start, _ = usage_month_of(subscription, now - RENEWAL_LATENESS)
        first = _first_month_owed(subscription)
        limit = subscription.plan.monthly_transactions
        organisation_id = subscription.organisation_id
        for month_start, used in months_by_organisation.get(organisation_id, ()):
            if (
                month_start < current_start
                and month_start >= first
                and limit
                and used > limit
                and (subscription.pk, month_start) not in billed
            ):
                yield Violation(
                    "overage",
                    organisation_id,
                    f"overage:{subscription.pk}:{month_start:%Y-%m-%d}",
                    f"{used:,} transactions over a limit of {limit:,} in the month from "
                    f"{month_start:%Y-%m-%d}, and no overage billed.",
                )


def _first_month_owed(subscription) -> datetime:
    """The first usage month whose overage this subscription still answers for: from its
    anchor (earlier months belong to another cycle or term); an ended monthly plan only its
    final month, the earlier ones having been billed by its renewals."""
    if (
        subscription.status == Subscription.Status.ENDED
        and subscription.billing_cycle == BillingCycle.MONTHLY
    ):
        return max(subscription.anchor_at, subscription.current_period_start)
    return subscription.anchor_at


def check_usage_counters(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """The usage counters of each closed day equal the Sync Info rows stored for that day (in
    the organisation's time zone). Checked over the last few days nightly and the last 28 for
    a single organisation: inside every plan's retention, so no row was purged yet."""
    days = USAGE_DAYS_FULL if organisation_ids is not None else USAGE_DAYS_NIGHTLY
    since = now - timedelta(days=days + 1)
    scope_rows = "AND s.organisation_id = ANY(%(ids)s)" if organisation_ids is not None else ""
    scope_counters = "AND c.organisation_id = ANY(%(ids)s)" if organisation_ids is not None else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH stored AS (
                SELECT s.organisation_id, (s.synced_at AT TIME ZONE o.time_zone)::date AS day,
                       count(*) AS n
                FROM usage_syncinfo s JOIN accounts_organisation o ON o.id = s.organisation_id
                WHERE s.synced_at >= %(since)s AND s.synced_at < %(now)s {scope_rows}
                GROUP BY 1, 2
            ), counted AS (
                SELECT c.organisation_id, c.day, sum(c.transactions) AS n
                FROM usage_usagecounter c
                WHERE c.day >= %(since_day)s {scope_counters}
                GROUP BY 1, 2
            )
            SELECT o.id, coalesce(st.day, co.day), coalesce(st.n, 0), coalesce(co.n, 0)
            FROM stored st
            FULL JOIN counted co
              ON co.organisation_id = st.organisation_id AND co.day = st.day
            JOIN accounts_organisation o ON o.id = coalesce(st.organisation_id, co.organisation_id)
            WHERE o.status = 'active'
              AND coalesce(st.n, 0) <> coalesce(co.n, 0)
              AND coalesce(st.day, co.day) > (%(since)s AT TIME ZONE o.time_zone)::date
              AND coalesce(st.day, co.day) < (%(now)s AT TIME ZONE o.time_zone)::date
            ORDER BY 1, 2
            """,  # noqa: S608 - only fixed fragments are formatted in
            {
                "since": since,
                "since_day": (since - timedelta(days=1)).date(),
                "now": now,
                "ids": list(organisation_ids or []),
            },
        )
        for organisation_id, day, stored, counted in cursor.fetchall():
            yield Violation(
                "usage_counters",
                organisation_id,
                f"usage:{organisation_id}:{day}",
                f"On {day} the counters say {counted:,} transactions, {stored:,} Sync Info "
                "rows are stored.",
            )


# 7. Status, open invoices and dunning ----------------------------------------------------------


def check_status(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """The subscription's status agrees with its open invoices and its dunning record: past
    due, grace and suspended have an open dunning case and an open invoice; grace has passed
    Day 7 and suspended Day 14 of that case; any other status has no open dunning case; an
    active card subscription has no open invoice overdue by more than a day with a failed
    payment (that is past due)."""
    subscriptions = _scope(
        Subscription.objects.filter(organisation__status=Organisation.Status.ACTIVE),
        organisation_ids,
    ).values_list("pk", "organisation_id", "status", "payment_method_kind")
    open_cases, steps = _open_dunning_cases()
    open_invoices, failed_overdue = _subscriptions_with_open_invoices(now=now)
    for subscription_id, organisation_id, status, method in subscriptions:
        subject = f"subscription:{subscription_id}"
        case = open_cases.get(subscription_id)

        def found(message, subject=subject, organisation_id=organisation_id):
            return Violation("status", organisation_id, subject, message)

        if status in FAILING:
            if case is None:
                yield found(f"Status {status} without an open dunning case.")
            if subscription_id not in open_invoices:
                yield found(f"Status {status} without an open invoice.")
            if (
                status == Subscription.Status.SUSPENDED
                and case
                and DunningStep.Step.DAY_14 not in steps[case]
            ):
                yield found("Suspended before Day 14 of the dunning case.")
            if (
                status == Subscription.Status.GRACE
                and case
                and DunningStep.Step.DAY_7 not in steps[case]
            ):
                yield found("In the grace period before Day 7 of the dunning case.")
        elif case is not None:
            yield found(f"Status {status} with an open dunning case.")
        elif (
            status == Subscription.Status.ACTIVE
            and method == PaymentMethodKind.CARD
            and subscription_id in failed_overdue
        ):
            yield found("Active, with an open invoice overdue whose payment failed (past due).")


def _open_dunning_cases() -> tuple[dict[int, int], dict[int, set]]:
    """The open dunning case of each subscription, and the steps each open case has taken."""
    open_cases = dict(
        DunningCase.objects.filter(status=DunningCase.Status.OPEN).values_list(
            "subscription_id", "pk"
        )
    )
    steps = defaultdict(set)
    for case_id, step in DunningStep.objects.filter(
        case__status=DunningCase.Status.OPEN
    ).values_list("case_id", "step"):
        steps[case_id].add(step)
    return open_cases, steps


def _subscriptions_with_open_invoices(*, now: datetime) -> tuple[set[int], set[int]]:
    """Subscriptions with an open invoice, and those whose open invoice is overdue by more
    than a day with a failed payment."""
    open_invoices = set(
        Invoice.objects.filter(status=Invoice.Status.OPEN, subscription__isnull=False).values_list(
            "subscription_id", flat=True
        )
    )
    failed_overdue = set(
        Invoice.objects.filter(
            status=Invoice.Status.OPEN,
            subscription__isnull=False,
            due_at__lte=now - timedelta(days=1),
            payments__status=Payment.Status.FAILED,
        ).values_list("subscription_id", flat=True)
    )
    return open_invoices, failed_overdue


# 8. Credit notes, refunds and the customer balance ---------------------------------------------

# Outcomes that give money back, against what was paid for the invoice.
_MONEY_BACK = (
    CreditNote.Outcome.REFUND,
    CreditNote.Outcome.BALANCE,
    CreditNote.Outcome.REFUNDED_OUTSIDE,
    CreditNote.Outcome.REFUNDED_IN_STRIPE,
)
_BY_REFUND = (CreditNote.Outcome.REFUND, CreditNote.Outcome.REFUNDED_IN_STRIPE)


def check_credit_notes(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Credited ≤ invoiced: each credit note's lines add up to its subtotal and tax, and is of
    its invoice's organisation and currency; per invoice, what credit notes credit of its lines
    is what amount_credited says and no more than its total, and the part that reduced what was
    owed is amount_credited_unpaid; per invoice line, no more than its amount is credited; what
    went back to the customer (card, balance, outside) is no more than was paid for the invoice
    (money and balance applied, and what a lost dispute took back: that is owed again)."""
    notes = _scope(CreditNote.objects.all(), organisation_ids).annotate(
        lines_amount=Sum("lines__amount"), lines_tax=Sum("lines__tax_amount")
    )
    for row in notes.values(
        "organisation_id",
        "number",
        "subtotal",
        "tax_amount",
        "currency",
        "lines_amount",
        "lines_tax",
        "invoice__organisation_id",
        "invoice__currency",
    ):
        subject = f"credit_note:{row['number']}"
        if (row["lines_amount"], row["lines_tax"]) != (row["subtotal"], row["tax_amount"]):
            yield Violation(
                "credit_notes",
                row["organisation_id"],
                subject,
                f"Lines add up to {row['lines_amount']} + {row['lines_tax']} tax, the credit note "
                f"says {row['subtotal']} + {row['tax_amount']}.",
            )
        if (row["organisation_id"], row["currency"]) != (
            row["invoice__organisation_id"],
            row["invoice__currency"],
        ):
            yield Violation(
                "credit_notes",
                row["organisation_id"],
                subject,
                "The credit note is not in its invoice's organisation or currency.",
            )
    yield from _invoice_credit_findings(organisation_ids)
    over_lines = (
        _scope(
            CreditNoteLine.objects.filter(invoice_line__isnull=False),
            organisation_ids,
            "credit_note__organisation_id",
        )
        .values("invoice_line_id", "invoice_line__amount", "invoice_line__position")
        .annotate(credited=Sum("amount"))
        .filter(credited__gt=F("invoice_line__amount"))
        .values_list(
            "credit_note__organisation_id",
            "invoice_line__invoice__number",
            "invoice_line__position",
            "invoice_line__amount",
            "credited",
        )
    )
    for organisation_id, number, position, amount, credited in over_lines:
        yield Violation(
            "credit_notes",
            organisation_id,
            f"invoice:{number}",
            f"Line {position} is credited {credited} of its {amount}.",
        )


def _invoice_credit_findings(organisation_ids) -> Iterator[Violation]:
    """Per invoice with credit: its figures against its credit notes."""
    credited = defaultdict(lambda: {"lines": 0, "tax": 0, "unpaid": 0, "back": 0})
    rows = (
        _scope(
            CreditNoteLine.objects.filter(invoice_line__isnull=False),
            organisation_ids,
            "credit_note__organisation_id",
        )
        .values("credit_note__invoice_id", "credit_note__outcome")
        .annotate(amount=Sum("amount"), tax=Sum("tax_amount"))
        .values_list("credit_note__invoice_id", "credit_note__outcome", "amount", "tax")
    )
    for invoice_id, outcome, amount, tax in rows:
        figures = credited[invoice_id]
        figures["lines"] += amount + tax
        figures["tax"] += tax
        if outcome == CreditNote.Outcome.REDUCE_DUE:
            figures["unpaid"] += amount + tax
        if outcome in _MONEY_BACK:
            figures["back"] += amount + tax
    invoices = _scope(
        Invoice.objects.filter(Q(pk__in=list(credited)) | ~Q(amount_credited=0)),
        organisation_ids,
    ).values(
        "pk",
        "organisation_id",
        "number",
        "currency",
        "total",
        "tax_amount",
        "amount_paid",
        "credit_applied",
        "amount_credited",
        "amount_credited_unpaid",
    )
    lost = _lost_to_disputes(organisation_ids)
    for invoice in invoices:
        figures = credited.get(invoice["pk"], {"lines": 0, "tax": 0, "unpaid": 0, "back": 0})
        currency = invoice["currency"]

        def found(message, invoice=invoice):
            return Violation(
                "credit_notes", invoice["organisation_id"], f"invoice:{invoice['number']}", message
            )

        if figures["lines"] != invoice["amount_credited"]:
            yield found(
                f"Credit notes credit {_money(figures['lines'], currency)}; amount_credited "
                f"says {_money(invoice['amount_credited'], currency)}."
            )
        if figures["lines"] > invoice["total"] or figures["tax"] > invoice["tax_amount"]:
            yield found(
                f"Credited {_money(figures['lines'], currency)} (tax "
                f"{_money(figures['tax'], currency)}) of an invoice of "
                f"{_money(invoice['total'], currency)} (tax "
                f"{_money(invoice['tax_amount'], currency)})."
            )
        if figures["unpaid"] != invoice["amount_credited_unpaid"]:
            yield found(
                f"Credit notes reduced what was owed by {_money(figures['unpaid'], currency)}; "
                f"amount_credited_unpaid says "
                f"{_money(invoice['amount_credited_unpaid'], currency)}."
            )
        # What a lost dispute took back is owed again and chased by dunning; what went back
        # before it is measured against what had been paid.
        paid = invoice["amount_paid"] + invoice["credit_applied"] + lost.get(invoice["pk"], 0)
        if figures["back"] > paid:
            yield found(
                f"{_money(figures['back'], currency)} went back to the customer; only "
                f"{_money(paid, currency)} was paid."
            )


def check_credit_note_numbering(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Credit-note numbers are CN-<year>-NNNNNN, unique and gapless up to the year's sequence.
    Numbering is global: this rule always looks at every credit note."""
    numbers = defaultdict(list)
    for number in CreditNote.objects.values_list("number", flat=True):
        parts = number.split("-")
        if len(parts) != 3 or parts[0] != "CN" or not (parts[1] + parts[2]).isdigit():
            yield Violation(
                "numbering", None, f"credit_note:{number}", f"{number} is not CN-YYYY-NNNNNN."
            )
            continue
        numbers[int(parts[1])].append(int(parts[2]))
    sequences = dict(CreditNoteSequence.objects.values_list("year", "last_number"))
    for year in sorted(set(numbers) | set(sequences)):
        issued = numbers.get(year, [])
        highest = max(issued, default=0)
        if len(set(issued)) != len(issued) or highest != len(issued):
            yield Violation(
                "numbering",
                None,
                f"credit_notes:{year}",
                f"{len(issued)} credit note(s) in {year}, numbered up to {highest}: a gap or a "
                "duplicate.",
            )
        if highest != sequences.get(year, 0):
            yield Violation(
                "numbering",
                None,
                f"credit_notes:{year}",
                f"The {year} credit-note sequence is at {sequences.get(year, 0)}, the highest "
                f"credit note is {highest}.",
            )


def check_refunds(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Refunded ≤ paid: per payment, refunds made or under way add up to no more than the
    payment; every refund to a card belongs to one credit note of that outcome and the same
    amount, and a credit note shows "refund pending" exactly while its refund is."""
    over = (
        _scope(Payment.objects.all(), organisation_ids)
        .annotate(refunded=Sum("refunds__amount", filter=~Q(refunds__status=Refund.Status.FAILED)))
        .filter(refunded__gt=F("amount"))
        .values_list("organisation_id", "idempotency_key", "amount", "refunded", "currency")
    )
    for organisation_id, key, amount, refunded, currency in over:
        yield Violation(
            "refunds",
            organisation_id,
            f"payment:{key}",
            f"Refunded {_money(refunded, currency)} of a payment of {_money(amount, currency)}.",
        )
    refunds = defaultdict(list)
    for credit_note_id, amount, status in _scope(
        Refund.objects.all(), organisation_ids
    ).values_list("credit_note_id", "amount", "status"):
        refunds[credit_note_id].append((amount, status))
    notes = _scope(
        CreditNote.objects.filter(Q(outcome__in=_BY_REFUND) | Q(pk__in=list(refunds))),
        organisation_ids,
    ).values_list("pk", "organisation_id", "number", "outcome", "status", "total", "currency")
    for pk, organisation_id, number, outcome, status, total, currency in notes:
        subject = f"credit_note:{number}"
        made = refunds.get(pk, [])
        live = [(amount, state) for amount, state in made if state != Refund.Status.FAILED]
        if outcome not in _BY_REFUND:
            yield Violation(
                "refunds", organisation_id, subject, f"A refund for a {outcome} credit note."
            )
            continue
        if len(live) != 1 or live[0][0] != total:
            yield Violation(
                "refunds",
                organisation_id,
                subject,
                f"{len(live)} refund(s) of {[amount for amount, _ in live]} for a credit note of "
                f"{_money(total, currency)}.",
            )
            continue
        pending = live[0][1] == Refund.Status.PENDING
        if pending != (status == CreditNote.Status.REFUND_PENDING):
            yield Violation(
                "refunds",
                organisation_id,
                subject,
                f"The credit note is {status}, its refund {live[0][1]}.",
            )


def check_balance(*, now: datetime, organisation_ids) -> Iterator[Violation]:
    """Each credit of the customer balance keeps what its uses left of it (its amount, less
    what was applied or taken back, plus what voided invoices gave back), each use draws on a
    credit of its own organisation and currency, and each invoice's `credit_applied` is what
    its uses took less what they gave back (billing.balance); each credit note to the balance
    added exactly its total, once. So the balance equals credits to the balance minus credits
    applied."""
    entries = _scope(BalanceEntry.objects.all(), organisation_ids)
    credits = entries.filter(source__isnull=True).annotate(used=Sum("uses__amount"))
    for credit in credits.values(
        "pk", "organisation_id", "currency", "amount", "remaining", "used"
    ):
        expected = credit["amount"] + (credit["used"] or 0)
        if credit["amount"] <= 0 or credit["remaining"] != expected:
            yield Violation(
                "balance",
                credit["organisation_id"],
                f"balance_entry:{credit['pk']}",
                f"A credit of {_money(credit['amount'], credit['currency'])} keeps "
                f"{_money(credit['remaining'], credit['currency'])}; its uses leave "
                f"{_money(expected, credit['currency'])}.",
            )
    strays = entries.filter(source__isnull=False).filter(
        ~Q(organisation_id=F("source__organisation_id")) | ~Q(currency=F("source__currency"))
    )
    for pk, organisation_id in strays.values_list("pk", "organisation_id"):
        yield Violation(
            "balance",
            organisation_id,
            f"balance_entry:{pk}",
            "A use of the balance draws on a credit of another organisation or currency.",
        )
    to_balance = _scope(
        CreditNote.objects.filter(outcome=CreditNote.Outcome.BALANCE), organisation_ids
    ).annotate(
        added=Sum(
            "balance_entries__amount",
            filter=Q(balance_entries__kind=BalanceEntry.Kind.CREDIT_NOTE),
        ),
        rows=Count(
            "balance_entries", filter=Q(balance_entries__kind=BalanceEntry.Kind.CREDIT_NOTE)
        ),
    )
    for organisation_id, number, total, added, rows, currency in to_balance.values_list(
        "organisation_id", "number", "total", "added", "rows", "currency"
    ):
        if rows != 1 or added != total:
            yield Violation(
                "balance",
                organisation_id,
                f"credit_note:{number}",
                f"A credit note of {_money(total, currency)} to the balance added "
                f"{_money(added or 0, currency)} in {rows} movement(s).",
            )
    taken = {
        row["invoice_id"]: -(row["total"] or 0)
        for row in entries.filter(invoice__isnull=False)
        .values("invoice_id")
        .annotate(total=Sum("amount"))
    }
    invoices = _scope(Invoice.objects.all(), organisation_ids).filter(
        Q(credit_applied__gt=0) | Q(pk__in=list(taken))
    )
    for invoice in invoices.values("pk", "organisation_id", "number", "currency", "credit_applied"):
        used = taken.get(invoice["pk"], 0)
        if invoice["credit_applied"] != used:
            yield Violation(
                "balance",
                invoice["organisation_id"],
                f"invoice:{invoice['number']}",
                f"credit_applied says {_money(invoice['credit_applied'], invoice['currency'])}, "
                f"the balance entries {_money(used, invoice['currency'])}.",
            )


RULES = (
    check_periods,
    check_invoice_totals,
    check_numbering,
    check_payments,
    check_credit_notes,
    check_credit_note_numbering,
    check_refunds,
    check_balance,
    check_upgrade_quotes,
    check_overage,
    check_usage_counters,
    check_status,
)


def ledger_check(*, now: datetime, organisation_ids: list[int] | None = None) -> list[Violation]:
    """Every violation of every rule, for all organisations or only `organisation_ids`."""
    found = []
    for rule in RULES:
        found.extend(rule(now=now, organisation_ids=organisation_ids))
    return found


def ledger_record(*, now: datetime) -> dict:
    """The nightly run: open a LedgerViolation for each new finding, refresh those seen again,
    close those gone. Safe to run twice (one open row per rule and subject)."""
    violations = ledger_check(now=now)
    seen = {(v.rule, v.subject): v for v in violations}
    with transaction.atomic():
        open_rows = {
            (row.rule, row.subject): row
            for row in LedgerViolation.objects.select_for_update().filter(resolved_at__isnull=True)
        }
        closed = [row.pk for key, row in open_rows.items() if key not in seen]
        LedgerViolation.objects.filter(pk__in=closed).update(resolved_at=now)
        again = [row.pk for key, row in open_rows.items() if key in seen]
        LedgerViolation.objects.filter(pk__in=again).update(last_seen_at=now)
        new = [
            LedgerViolation(
                rule=v.rule,
                organisation_id=v.organisation_id,
                subject=v.subject[:200],
                message=v.message,
                first_seen_at=now,
                last_seen_at=now,
            )
            for key, v in seen.items()
            if key not in open_rows
        ]
        LedgerViolation.objects.bulk_create(new)
        # The message may have changed (amounts): keep the latest words on the open rows.
        for key, row in open_rows.items():
            if key in seen and row.message != seen[key].message:
                LedgerViolation.objects.filter(pk=row.pk).update(message=seen[key].message)
    return {"found": len(seen), "new": len(new), "closed": len(closed)}
