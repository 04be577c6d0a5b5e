"""The failed-payment banner on every organisation page (dunning states show
as banners in the portal, not only by email)."""

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, F, OuterRef, Subquery, Sum
from django.utils.functional import SimpleLazyObject

from accounts.roles import ADMIN_AND_BILLING
from billing.dunning import ORDER, Step, open_invoices, step_due_at
from billing.models import DunningCase, Payment, amount_due_sql
from subscriptions.models import PaymentMethodKind
from subscriptions.states import FAILING


@dataclass(frozen=True)
class AccountState:
    status: str
    amount_due: int
    currency: str
    by_card: bool
    # The next charge attempt of the schedule (None once the final attempt ran).
    retry_at: datetime | None
    suspension_at: datetime
    can_pay: bool
    # The open invoice whose payment waits for the customer's bank (3-D Secure), if any.
    confirm_invoice: str = ""


def account_state(request) -> dict:
    """`account_state`: what the banner says, or None when the account is in good standing.

    Lazy, so a page that never renders the banner runs no query. On an organisation page
    tenant_view's membership query has already said whether a dunning case is open
    (`dunning_open`, annotated by portal.frame): without one the banner costs nothing. With
    one (or a membership that was not loaded by tenant_view) it costs one query: the open case
    with its subscription and the amount due. A past due, grace or suspended subscription
    always has an open case, and an account in good standing never touches the subscription
    table for it.
    """
    organisation = getattr(request, "organisation", None)
    membership = getattr(request, "membership", None)
    if organisation is None or membership is None:
        return {}
    if getattr(membership, "dunning_open", True) is False:
        return {"account_state": None}
    can_pay = membership.role in ADMIN_AND_BILLING
    return {"account_state": SimpleLazyObject(lambda: _state(organisation, can_pay=can_pay))}


def _state(organisation, *, can_pay: bool) -> AccountState | None:
    due = (
        open_invoices(OuterRef("subscription"))
        .order_by()
        .values("subscription")
        .annotate(total=Sum(amount_due_sql()))
        .values("total")
    )
    awaiting = (
        open_invoices(OuterRef("subscription"))
        .filter(payments__status=Payment.Status.REQUIRES_ACTION)
        .order_by("issued_at", "pk")
        .values("number")[:1]
    )
    case = (
        DunningCase.objects.filter(organisation=organisation, status=DunningCase.Status.OPEN)
        .annotate(
            confirm_invoice=Subquery(awaiting),
            steps_done=Count("steps"),
            subscription_status=F("subscription__status"),
            currency=F("subscription__currency"),
            payment_method_kind=F("subscription__payment_method_kind"),
            due=Subquery(due),
        )
        .first()
    )
    if case is None or case.subscription_status not in FAILING:
        return None
    # Steps are recorded in schedule order (a late run records the ones it skipped), so the
    # next step is the one after those recorded.
    upcoming = ORDER[case.steps_done] if case.steps_done < len(ORDER) else None
    by_card = case.payment_method_kind == PaymentMethodKind.CARD
    return AccountState(
        status=case.subscription_status,
        amount_due=case.due or 0,
        currency=case.currency,
        by_card=by_card,
        retry_at=(
            step_due_at(case, upcoming)
            if by_card and upcoming in (Step.DAY_3, Step.DAY_7)
            else None
        ),
        suspension_at=step_due_at(case, Step.DAY_14),
        can_pay=can_pay,
        confirm_invoice=case.confirm_invoice or "",
    )
