"""Configuration export: every ProcessFlow, connection and environment of an organisation as
one JSON document (self-service, beyond the article, which routes this through support;
offered during the deletion countdown).

No secrets leave the portal in it. Connection and flow settings (`config`) are meant to hold
non-secret settings only, but nothing enforces that, so every value whose key looks like a
secret, at any depth of the JSON (in dicts inside lists too), is replaced by "[removed]": a
key containing password, passwd, passphrase, secret, token, key, credential or private
(case-insensitive: "api_key", "clientSecret", "AccessToken" ...). The rule errs on the side
of removing: a harmless "record_key" is removed too. API keys are never exported (only their
hash exists).
"""

import re
from datetime import datetime
from typing import Any

from accounts.models import Organisation
from subscriptions.models import Connection, Environment, ProcessFlow

FORMAT = "configuration-export"
VERSION = 1
REMOVED = "[removed]"
SECRET_KEY_PATTERN = re.compile(r"passw(or)?d|passphrase|secret|token|key|credential|private", re.I)


def secrets_removed(value: Any) -> tuple[Any, int]:
    """`value` with every secret-looking key's value replaced, and how many were replaced."""
    if isinstance(value, dict):
        cleaned, removed = {}, 0
        for key, item in value.items():
            if SECRET_KEY_PATTERN.search(str(key)):
                cleaned[key] = REMOVED
                removed += 1
            else:
                cleaned[key], count = secrets_removed(item)
                removed += count
        return cleaned, removed
    if isinstance(value, list):
        cleaned_items, removed = [], 0
        for item in value:
            cleaned, count = secrets_removed(item)
            cleaned_items.append(cleaned)
            removed += count
        return cleaned_items, removed
    return value, 0


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _id(value) -> str | None:
    return str(value) if value is not None else None


def configuration_export(*, organisation: Organisation, now: datetime | None = None) -> dict:
    """The organisation's configuration, secrets removed (see the module docstring)."""
    environments = list(Environment.objects.filter(organisation=organisation).order_by("pk"))
    env_ids = {env.pk: env.public_id for env in environments}
    connections = list(Connection.objects.filter(organisation=organisation).order_by("pk"))
    conn_ids = {conn.pk: conn.public_id for conn in connections}
    flows = list(ProcessFlow.objects.filter(organisation=organisation).order_by("pk"))
    removed = 0

    def config(value):
        nonlocal removed
        cleaned, count = secrets_removed(value)
        removed += count
        return cleaned

    document = {
        "format": FORMAT,
        "version": VERSION,
        "organisation": {"name": organisation.name, "slug": organisation.slug},
        "exported_at": _when(now),
        "environments": [
            {
                "public_id": str(env.public_id),
                "name": env.name,
                "created_at": _when(env.created_at),
            }
            for env in environments
        ],
        "connections": [
            {
                "public_id": str(conn.public_id),
                "name": conn.name,
                "application": conn.application,
                "environment": _id(env_ids.get(conn.environment_id)),
                "config": config(conn.config),
                "created_at": _when(conn.created_at),
            }
            for conn in connections
        ],
        "process_flows": [
            {
                "public_id": str(flow.public_id),
                "name": flow.name,
                "environment": _id(env_ids.get(flow.environment_id)),
                "source": _id(conn_ids.get(flow.source_id)),
                "target": _id(conn_ids.get(flow.target_id)),
                "status": flow.status,
                "pause_reason": flow.pause_reason,
                "paused_at": _when(flow.paused_at),
                "config": config(flow.config),
                "created_at": _when(flow.created_at),
            }
            for flow in flows
        ],
    }
    document["secrets_removed"] = removed
    return document
