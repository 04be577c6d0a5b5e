"""The database session engine, with a record of who a session belongs to and where it was
last used (docs/architecture.md#decision-session-records-and-sign-in-notices).

Django's engine rewrites the whole row on every save; this one writes the record's columns
(created_at, last use, user agent, address) only when the session is created or when
SessionRecordMiddleware notes a use, so a save never resets them.
"""

import ipaddress
from datetime import datetime

from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.contrib.sessions.backends.db import SessionStore as DBStore
from django.db import DatabaseError, IntegrityError, router, transaction
from django.utils import timezone

from accounts.models import UserSession

USER_AGENT_MAX = 300


def _valid_ip(value: str | None) -> str | None:
    """The address, or None when the proxy passed something that is not one: the column is
    an inet, and a bad value must not make the session unsaveable."""
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


class SessionStore(DBStore):
    def __init__(self, session_key=None):
        super().__init__(session_key)
        # The row this session was loaded from (None until loaded, or when new).
        self.record: UserSession | None = None
        self._pending_use: dict | None = None

    @classmethod
    def get_model_class(cls):
        return UserSession

    def _get_session_from_db(self):
        self.record = super()._get_session_from_db()
        return self.record

    def note_use(self, *, now: datetime, user_agent: str, ip_address: str | None) -> None:
        """Write the last use with the next save (marks the session modified, so the session
        middleware saves it once at the end of the request)."""
        self._pending_use = {
            "last_seen_at": now,
            "user_agent": (user_agent or "")[:USER_AGENT_MAX],
            "ip_address": _valid_ip(ip_address),
        }
        self.modified = True

    def create_model_instance(self, data):
        obj = super().create_model_instance(data)
        user_id = data.get(SESSION_KEY)
        obj.user_id = int(user_id) if user_id is not None else None
        obj.auth_hash = data.get(HASH_SESSION_KEY, "")
        return obj

    def save(self, must_create=False):
        if self.session_key is None:
            self.create()
            return
        data = self._get_session(no_load=must_create)
        obj = self.create_model_instance(data)
        fields = ["session_data", "expire_date", "user", "auth_hash"]
        if self._pending_use:
            for name, value in self._pending_use.items():
                setattr(obj, name, value)
            fields += list(self._pending_use)
        if must_create:
            obj.created_at = timezone.now()
        using = router.db_for_write(self.model, instance=obj)
        try:
            with transaction.atomic(using=using):
                if must_create:
                    obj.save(force_insert=True, using=using)
                else:
                    obj.save(update_fields=fields, using=using)
        except IntegrityError:
            if must_create:
                raise CreateError from None
            raise
        except DatabaseError:
            # The row was deleted meanwhile (the session was ended): as Django's own engine.
            if not must_create:
                raise UpdateError from None
            raise
        if must_create:
            self.record = obj
        elif self.record is not None and self._pending_use:
            for name, value in self._pending_use.items():
                setattr(self.record, name, value)
        self._pending_use = None
