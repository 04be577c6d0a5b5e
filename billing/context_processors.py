"""The failed-payment banner on every organisation page (DESIGN.md section 2b: dunning states
show as banners in the portal, not only by email)."""

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, OuterRef, Subquery, Sum
from django.utils.functional import SimpleLazyObject

from accounts.roles import ADMIN_AND_BILLING
from billing.dunning import ORDER, Step, open_invoices, step_due_at
from billing.models import DunningCase
from subscriptions.models import PaymentMethodKind, Subscription

BANNER_STATUSES = (
    Subscription.Status.PAST_DUE,
    Subscription.Status.GRACE,
    Subscription.Status.SUSPENDED,
)


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


def account_state(request) -> dict:
    """`account_state`: what the banner says, or None when the account is in good standing.

    Lazy, so a page that never renders the banner runs no query. Rendered, it costs one query
    (the organisation's open dunning case) and a second only when there is one: a past due,
    grace or suspended subscription always has an open case, and an account in good standing
    never touches the subscription table for it.
    """
    organisation = getattr(request, "organisation", None)
    membership = getattr(request, "membership", None)
    if organisation is None or membership is None:
        return {}
    can_pay = membership.role in ADMIN_AND_BILLING
    return {"account_state": SimpleLazyObject(lambda: _state(organisation, can_pay=can_pay))}


def _state(organisation, *, can_pay: bool) -> AccountState | None:
    case = (
        DunningCase.objects.filter(organisation=organisation, status=DunningCase.Status.OPEN)
        .annotate(steps_done=Count("steps"))
        .first()
    )
    if case is None:
        return None
    due = (
        open_invoices(OuterRef("pk"))
        .order_by()
        .values("subscription")
        .annotate(total=Sum("total"))
        .values("total")
    )
    subscription = (
        Subscription.objects.filter(pk=case.subscription_id)
        .annotate(due=Subquery(due))
        .values("status", "currency", "payment_method_kind", "due")
        .first()
    )
    if subscription is None or subscription["status"] not in BANNER_STATUSES:
        return None
    # Steps are recorded in schedule order (a late run records the ones it skipped), so the
    # next step is the one after those recorded.
    upcoming = ORDER[case.steps_done] if case.steps_done < len(ORDER) else None
    by_card = subscription["payment_method_kind"] == PaymentMethodKind.CARD
    return AccountState(
        status=subscription["status"],
        amount_due=subscription["due"] or 0,
        currency=subscription["currency"],
        by_card=by_card,
        retry_at=(
            step_due_at(case, upcoming)
            if by_card and upcoming in (Step.DAY_3, Step.DAY_7)
            else None
        ),
        suspension_at=step_due_at(case, Step.DAY_14),
        can_pay=can_pay,
    )
