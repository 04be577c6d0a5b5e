"""Who is acting, and the audit trail of every change made in Settings."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from accounts.models import AuditEvent, Organisation, User
from core.http import client_ip


@dataclass(frozen=True)
class Actor:
    """The person (or the system, user=None) behind a change, and where the request came from."""

    user: User | None
    ip_address: str | None = None
    # Who acted when it was no user: the address that opened an emailed link (a billing
    # recipient confirming), so the audit log names it rather than "System".
    label: str = ""

    @classmethod
    def from_request(cls, request) -> "Actor":
        user = request.user if request.user.is_authenticated else None
        return cls(user=user, ip_address=client_ip(request))

    @property
    def email(self) -> str:
        return self.user.email if self.user else self.label


SYSTEM = Actor(user=None)


def changes_between(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fields whose value differs, as {"field": {"old": ..., "new": ...}}."""
    return {
        key: {"old": old.get(key), "new": value}
        for key, value in new.items()
        if old.get(key) != value
    }


def reason_change(reason: str) -> dict:
    """Why ops did something, as an audit `changes` entry (nothing when no reason was given)."""
    reason = reason.strip()
    return {"reason": {"old": None, "new": reason[:500]}} if reason else {}


def audit_record(
    *,
    organisation: Organisation,
    actor: Actor,
    action: str,
    now: datetime,
    target: Any = None,
    target_label: str = "",
    changes: dict | None = None,
) -> AuditEvent:
    """Write one audit row. Call it inside the service's transaction, after the change."""
    return AuditEvent.objects.create(
        organisation=organisation,
        actor=actor.user,
        actor_email=actor.email,
        action=action,
        target_type=target._meta.label if target is not None else "",
        target_id=str(getattr(target, "public_id", None) or getattr(target, "pk", "") or ""),
        target_label=target_label or (str(target) if target is not None else ""),
        changes=changes or {},
        ip_address=actor.ip_address,
        created_at=now,
    )
