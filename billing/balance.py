"""The customer balance: credit an organisation holds with us, per currency
(docs/architecture.md#decision-credit-notes-and-the-customer-balance).

A credit note whose outcome is "credit to the customer balance" adds to it, and so may ops
(an adjustment, with a reason). Credits are used oldest first: applied to the next invoices
before any charge (a "Credit applied (CN-…)" line below the tax), or taken back by an ops
adjustment. Each use names the credit it draws on, whose `remaining` falls; the balance is
the sum of what remains, and never goes below zero. Every service that draws on credits locks
them first (`_credits_locked`, always oldest first, so two of them never deadlock), so two at
once cannot both spend the same money.

A credit applied to an invoice that is later voided (a declined upgrade, a first invoice
replaced at checkout) goes back to the credit it came from.
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import F, Sum, Window

from accounts.audit import Actor, audit_record, reason_change
from accounts.models import Organisation
from billing.models import BalanceEntry, CreditNote, Invoice
from core.errors import ServiceError
from core.money import format_money, minimum_charge
from subscriptions.models import PaymentMethodKind

Kind = BalanceEntry.Kind
ADJUSTMENT_DESCRIPTION = "Adjustment by our team"


def balance_credit_from_note(*, credit_note: CreditNote, now: datetime) -> BalanceEntry:
    """The balance grows by a credit note's total (caller's transaction)."""
    return BalanceEntry.objects.create(
        organisation_id=credit_note.organisation_id,
        currency=credit_note.currency,
        kind=BalanceEntry.Kind.CREDIT_NOTE,
        amount=credit_note.total,
        remaining=credit_note.total,
        credit_note=credit_note,
        description=f"Credit note {credit_note.number} ({credit_note.invoice.number})",
        created_at=now,
        created_by=credit_note.created_by,
    )


def balance_of(*, organisation: Organisation, currency: str) -> int:
    """What the organisation holds in `currency`: the credits' remaining amounts."""
    return (
        BalanceEntry.objects.filter(
            organisation=organisation, currency=currency, remaining__gt=0
        ).aggregate(total=Sum("remaining"))["total"]
        or 0
    )


def _credits_locked(*, organisation_ids: Iterable[int], currency: str | None = None):
    """The open credits of these organisations (in `currency`, or all), oldest first, locked
    until the caller's transaction ends. Locked in the order they are used, by every caller,
    so two transactions drawing on the same credits wait for each other, never deadlock; a
    credit another transaction used up meanwhile is read as it is after that one committed."""
    credits = (
        BalanceEntry.objects.select_for_update(of=("self",))
        .select_related("credit_note")
        .filter(organisation_id__in=list(organisation_ids), remaining__gt=0)
        .order_by("created_at", "pk")
    )
    if currency is not None:
        credits = credits.filter(currency=currency)
    return list(credits)


def _source_label(credit: BalanceEntry) -> str:
    """What a use of `credit` names: its credit note, or the adjustment it came from."""
    return credit.credit_note.number if credit.credit_note_id else "balance adjustment"


def _draw(
    credits: list[BalanceEntry], amount: int, *, entry: dict, description: str
) -> list[BalanceEntry]:
    """Take `amount` from `credits`, oldest first: one (unsaved) negative entry per credit
    drawn on; each credit's `remaining` falls (unsaved too). The caller checked there is
    enough."""
    uses = []
    for credit in credits:
        if amount <= 0:
            break
        take = min(credit.remaining, amount)
        if take <= 0:
            continue
        credit.remaining -= take
        amount -= take
        uses.append(
            BalanceEntry(
                organisation_id=credit.organisation_id,
                currency=credit.currency,
                amount=-take,
                remaining=0,
                source=credit,
                description=description.format(source=_source_label(credit)),
                **entry,
            )
        )
    if amount:
        raise ValueError("Drew on credits that do not hold enough.")
    return uses


# Applied to new invoices -----------------------------------------------------------------------


def _to_apply(*, due: int, available: int, currency: str, card: bool) -> int:
    """How much of `available` goes on an invoice owing `due`: all it owes, or all there is,
    except that a card invoice never keeps an amount due between zero and the processor's
    minimum charge (core.money.minimum_charge). Such an amount could never be charged: Stripe
    refuses it, so the invoice would stay open and fall into the failed-payment schedule for
    cents. So less is applied, leaving exactly the minimum to charge, and the rest stays in
    the balance; an invoice owing less than the minimum and not covered in full gets nothing
    applied (docs/architecture.md#decision-amounts-below-the-minimum-charge-are-carried)."""
    amount = min(available, due)
    if card:
        floor = minimum_charge(currency)
        if 0 < due - amount < floor:
            amount = max(due - floor, 0)
    return amount


def balance_to_apply(*, organisation: Organisation, currency: str, amount: int) -> int:
    """What the balance would pay of a card invoice of `amount` issued now (the checkout and
    upgrade pages show it before the customer confirms): one query."""
    available = balance_of(organisation=organisation, currency=currency)
    if not available:
        return 0
    return _to_apply(due=amount, available=available, currency=currency, card=True)


def balance_apply(invoices: list[Invoice], *, now: datetime) -> list[Invoice]:
    """Apply the customer balance to newly issued invoices, before anything is charged
    (caller's transaction; billing.drafts.drafts_save calls it for every invoice it stores).

    Each invoice whose organisation holds credit in its currency gets min(balance, amount
    due) (less under the minimum-charge rule, see _to_apply), drawn from the oldest credits
    first: one "Credit applied (CN-…)" entry per credit drawn on, and `credit_applied` on the
    invoice. Several invoices of one organisation are served in the order given until the
    balance is used up; what is left stays for the next ones.

    One query finds which organisations of the batch hold any credit (the partial index
    `balance_entry_open_credit`); a batch where none does costs nothing more. Returns the
    invoices the balance covered in full: the caller settles them, they are never charged.
    """
    candidates = _holders(invoices)
    if not candidates:
        return []
    credits = _credits_locked(organisation_ids={i.organisation_id for i in candidates})
    uses, applied = _uses_plan(candidates, credits, now=now)
    if not applied:
        return []
    BalanceEntry.objects.bulk_create(uses)
    BalanceEntry.objects.bulk_update({use.source for use in uses}, ["remaining"])
    Invoice.objects.bulk_update(applied, ["credit_applied"])
    return [invoice for invoice in applied if invoice.amount_due == 0]


def balance_apply_preview(invoices: list[Invoice]) -> list[BalanceEntry]:
    """What balance_apply would do to these unsaved invoices, written nowhere: each invoice's
    `credit_applied` is set in memory, and the "Credit applied (CN-…)" entries it would get are
    returned unsaved (the upcoming invoice shows them). The same rule, without the locks."""
    candidates = _holders(invoices)
    if not candidates:
        return []
    credits = (
        BalanceEntry.objects.select_related("credit_note")
        .filter(organisation_id__in={i.organisation_id for i in candidates}, remaining__gt=0)
        .order_by("created_at", "pk")
    )
    uses, _ = _uses_plan(candidates, list(credits), now=None)
    return uses


def _holders(invoices: list[Invoice]) -> list[Invoice]:
    """The invoices that owe something and whose organisation holds credit in their currency:
    one query (the partial index `balance_entry_open_credit`), none when nothing is owed."""
    candidates = [
        invoice
        for invoice in invoices
        if invoice.status == Invoice.Status.OPEN and invoice.amount_due > 0
    ]
    if not candidates:
        return []
    holders = set(
        BalanceEntry.objects.filter(
            organisation_id__in={invoice.organisation_id for invoice in candidates},
            remaining__gt=0,
        )
        .order_by()
        .values_list("organisation_id", "currency")
        .distinct()
    )
    return [i for i in candidates if (i.organisation_id, i.currency) in holders]


def _uses_plan(
    candidates: list[Invoice], credits: list[BalanceEntry], *, now: datetime | None
) -> tuple[list[BalanceEntry], list[Invoice]]:
    """The uses of `credits` (oldest first) that pay the candidates, in order, and the invoices
    that got some; `credit_applied` and the credits' `remaining` change in memory only."""
    by_owner = defaultdict(list)
    for credit in credits:
        by_owner[(credit.organisation_id, credit.currency)].append(credit)
    uses, applied = [], []
    for invoice in candidates:
        mine = by_owner[(invoice.organisation_id, invoice.currency)]
        amount = _to_apply(
            due=invoice.amount_due,
            available=sum(credit.remaining for credit in mine),
            currency=invoice.currency,
            card=invoice.payment_method_kind == PaymentMethodKind.CARD,
        )
        if amount <= 0:
            continue
        uses += _draw(
            mine,
            amount,
            entry={"kind": Kind.APPLIED, "invoice": invoice, "created_at": now},
            description="Credit applied ({source})",
        )
        invoice.credit_applied += amount
        applied.append(invoice)
    return uses, applied


def balance_return(*, invoice: Invoice, now: datetime) -> int:
    """The invoice was voided: the credit applied to it goes back to the credits it came
    from, each with a "Credit returned" entry, and the invoice no longer counts it (caller's
    transaction). Returns the amount given back; a second call gives back nothing."""
    invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if invoice.status != Invoice.Status.VOID or invoice.credit_applied <= 0:
        return 0
    uses = list(
        invoice.balance_entries.filter(kind__in=(Kind.APPLIED, Kind.RETURNED)).values_list(
            "source_id", "amount"
        )
    )
    owed = defaultdict(int)
    for source_id, amount in uses:
        owed[source_id] -= amount
    sources = (
        BalanceEntry.objects.select_for_update(of=("self",))
        .select_related("credit_note")
        .filter(pk__in=[pk for pk, amount in owed.items() if amount > 0])
        .order_by("created_at", "pk")
    )
    returned = []
    for source in sources:
        source.remaining += owed[source.pk]
        returned.append(
            BalanceEntry(
                organisation_id=invoice.organisation_id,
                currency=invoice.currency,
                kind=Kind.RETURNED,
                amount=owed[source.pk],
                remaining=0,
                source=source,
                invoice=invoice,
                description=(
                    f"Credit returned ({_source_label(source)}): {invoice.number} was voided"
                ),
                created_at=now,
            )
        )
    BalanceEntry.objects.bulk_create(returned)
    BalanceEntry.objects.bulk_update([entry.source for entry in returned], ["remaining"])
    given_back = sum(entry.amount for entry in returned)
    invoice.credit_applied -= given_back
    invoice.save(update_fields=["credit_applied"])
    return given_back


def invoice_credits_applied(invoice: Invoice) -> list[BalanceEntry]:
    """The "Credit applied (…)" entries of an invoice, in the order they were drawn."""
    return list(invoice.balance_entries.filter(kind=Kind.APPLIED).order_by("pk"))


# Ops adjustments -------------------------------------------------------------------------------


def balance_adjust(
    *,
    organisation: Organisation,
    currency: str,
    amount: int,
    actor: Actor,
    reason: str,
    now: datetime,
) -> list[BalanceEntry]:
    """Ops adjust an organisation's balance, with a reason (Django admin, Billing staff;
    docs/architecture.md#decision-ops-actions-that-change-money-or-access-ask-why).

    A positive `amount` (minor units) is a new credit; a negative one takes from the credits,
    oldest first, and is refused when the balance does not hold that much. The currency must
    be the organisation's own (it invoices in no other) and one we sell in. Refused with a
    readable message and nothing written on bad input; audited ("billing.balance_adjusted")
    with the reason. Returns the entries written.
    """
    reason = (reason or "").strip()
    if actor.user is None:
        raise ServiceError("A balance is adjusted by a person, not by the system.")
    if not reason:
        raise ServiceError("Give the reason for the adjustment.", field="reason")
    if len(reason) > 500:
        raise ServiceError("The reason is too long (500 characters at most).", field="reason")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
        raise ServiceError("The amount must be a whole number of cents, not zero.", field="amount")
    if currency not in settings.CURRENCIES:
        raise ServiceError(
            f"Choose one of the currencies we sell in ({', '.join(settings.CURRENCIES)}).",
            field="currency",
        )
    if currency != organisation.currency:
        raise ServiceError(
            f"{organisation.name} is invoiced in {organisation.currency}; a balance in "
            f"{currency} would never be used.",
            field="currency",
        )
    with transaction.atomic():
        credits = _credits_locked(organisation_ids=[organisation.pk], currency=currency)
        before = sum(credit.remaining for credit in credits)
        entry = {
            "kind": Kind.ADJUSTMENT,
            "reason": reason,
            "created_at": now,
            "created_by": actor.user,
        }
        if amount > 0:
            entries = [
                BalanceEntry.objects.create(
                    organisation=organisation,
                    currency=currency,
                    amount=amount,
                    remaining=amount,
                    description=ADJUSTMENT_DESCRIPTION,
                    **entry,
                )
            ]
        else:
            if -amount > before:
                raise ServiceError(
                    f"The balance of {organisation.name} is {format_money(before, currency)}; "
                    f"taking {format_money(-amount, currency)} would take it below zero. "
                    "Nothing was changed.",
                    field="amount",
                )
            entries = _draw(credits, -amount, entry=entry, description=ADJUSTMENT_DESCRIPTION)
            BalanceEntry.objects.bulk_create(entries)
            BalanceEntry.objects.bulk_update({e.source for e in entries}, ["remaining"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="billing.balance_adjusted",
            target=organisation,
            target_label=organisation.name,
            changes={
                "balance": {
                    "old": format_money(before, currency),
                    "new": format_money(before + amount, currency),
                },
                "amount": {"old": None, "new": format_money(amount, currency)},
                **reason_change(reason),
            },
            now=now,
        )
    return entries


# What the customer sees ------------------------------------------------------------------------


@dataclass(frozen=True)
class CurrencyBalance:
    currency: str
    amount: int


def balances_of(*, organisation: Organisation) -> list[CurrencyBalance]:
    """The organisation's balance in each currency it ever held credit in (zero included),
    its own currency first: one query."""
    rows = (
        BalanceEntry.objects.filter(organisation=organisation)
        .order_by()
        .values("currency")
        .annotate(total=Sum("remaining"))
    )
    found = [CurrencyBalance(currency=row["currency"], amount=row["total"]) for row in rows]
    return sorted(found, key=lambda b: (b.currency != organisation.currency, b.currency))


def balance_history(*, organisation: Organisation):
    """Every movement of the organisation's balance, newest first, each with `balance_after`
    (the balance in its currency once it was made), with the credit note and invoice it
    names: one query, however long the history (the running sum is a window in SQL)."""
    return (
        BalanceEntry.objects.filter(organisation=organisation)
        .select_related("credit_note", "invoice")
        .only(
            "currency",
            "kind",
            "amount",
            "description",
            "created_at",
            "credit_note__number",
            "invoice__number",
        )
        .annotate(
            balance_after=Window(
                Sum("amount"),
                partition_by=[F("currency")],
                order_by=[F("created_at").asc(), F("pk").asc()],
            )
        )
        .order_by("-created_at", "-pk")
    )
