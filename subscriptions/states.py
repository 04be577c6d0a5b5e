"""The subscription status machine, written down in one place.

    incomplete ──first invoice paid──► active ◄──────── paid up ───────┐
        │                                │                             │
        └──abandoned──► ended            ├─charge failed─► past_due ───┤
                                         │                   │ day 7   │
                                         │                   ▼         │
                                         │                 grace ──────┤
                                         │                   │ day 14  │
                                         │                   ▼         │
                                         │               suspended ────┘
                                         └─period end after cancellation─► ended
                                                                         │ resubscribe
                                                             incomplete ◄┘

Every status change goes through `subscription_transition`, which refuses any move not
listed in TRANSITIONS and records when the status changed.
"""

from datetime import datetime

from core.errors import ServiceError
from subscriptions.models import Subscription

Status = Subscription.Status

TRANSITIONS: dict[str, frozenset[str]] = {
    Status.INCOMPLETE: frozenset({Status.ACTIVE, Status.ENDED}),
    Status.ACTIVE: frozenset({Status.PAST_DUE, Status.ENDED}),
    Status.PAST_DUE: frozenset({Status.ACTIVE, Status.GRACE, Status.ENDED}),
    Status.GRACE: frozenset({Status.ACTIVE, Status.SUSPENDED, Status.ENDED}),
    Status.SUSPENDED: frozenset({Status.ACTIVE, Status.ENDED}),
    # Resubscribing: a new first invoice, paid, makes it active again.
    Status.ENDED: frozenset({Status.INCOMPLETE}),
}

# Statuses whose service runs (flows may execute) and which renew at period end.
SERVING = frozenset({Status.ACTIVE, Status.PAST_DUE, Status.GRACE})
# A payment is failing: the failed-payment banner shows, the ops dashboard counts it, the ledger
# expects an open dunning case.
FAILING = frozenset({Status.PAST_DUE, Status.GRACE, Status.SUSPENDED})
# A suspended subscription issues no new period invoice until it is paid up
# (docs/architecture.md#decision-failed-payments-follow-a-fixed-schedule).
RENEWING = frozenset({Status.ACTIVE, Status.PAST_DUE, Status.GRACE})


class InvalidTransition(ServiceError):
    pass


def can_transition(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def subscription_transition(*, subscription: Subscription, to: str, now: datetime) -> bool:
    """Move `subscription` to status `to` (caller holds its row lock and saves nothing else).

    Returns False when it already has that status, so retried steps are harmless.
    """
    if subscription.status == to:
        return False
    if not can_transition(subscription.status, to):
        raise InvalidTransition(
            f"A subscription cannot go from {subscription.get_status_display()} to "
            f"{Status(to).label}."
        )
    subscription.status = to
    subscription.status_changed_at = now
    fields = ["status", "status_changed_at"]
    if to == Status.ACTIVE and subscription.activated_at is None:
        subscription.activated_at = now
        fields.append("activated_at")
    if to == Status.ENDED:
        subscription.ended_at = now
        fields.append("ended_at")
    subscription.save(update_fields=fields)
    return True
