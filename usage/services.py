"""Machine API keys and Sync Info ingestion.

A batch is validated whole first; any invalid record rejects it with every error listed and
nothing stored. An accepted batch is written with COPY, and the per-day usage counters are
updated in the same transaction, so the usage figure is exact. The idempotency key makes a
resend return the first answer without counting anything again; the same key with another
body is a conflict. After each batch the usage alerts are checked (usage.alerts): each is
claimed by a unique row, so one email per usage month however many batches cross at once.
Each row is written with its retention tier (usage.partitions): the partition the purge
will drop it with.

The hot path (docs/architecture.md#decision-the-ingest-path-msgspec-binary-copy-raw-sql):
a batch of plainly valid records is decoded by msgspec straight into typed structs and checked
in one loop; anything else (an error, an unknown field, a snapshot, another spelling of a
flow id) goes through the full check, which reports every error. The rows go to Postgres in
one binary COPY, and the batch's few statements are raw SQL.
"""

import contextlib
import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple
from uuid import UUID

import msgspec
from dateutil.relativedelta import relativedelta
from django.db import IntegrityError, connection, transaction

from accounts.audit import Actor, audit_record
from accounts.models import Organisation
from core.errors import ServiceError
from subscriptions.models import Environment, Subscription
from usage.alerts import alerts_check, subscription_for_ingest
from usage.models import ApiKey, IngestBatch
from usage.months import usage_month_of
from usage.partitions import SNAPSHOT_TABLE, SYNC_INFO_TABLE, Retention, ingest_retention

MAX_RECORDS = 5_000
MAX_MESSAGE = 500
MAX_SNAPSHOT_BYTES = 64 * 1024
# synced_at must be recent: older records would be past every plan's retention.
OLDEST = timedelta(days=400)
NEWEST = timedelta(days=1)
KEY_PREFIX = "ak_"
# Trimmed from record keys. Only ASCII: Python's idea of Unicode whitespace differs from the
# one JSON Schema patterns use, and the OpenAPI document must say exactly what is accepted.
ASCII_SPACE = " \t\n\r\f\v"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# API keys -------------------------------------------------------------------------------------


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_create(
    *, environment: Environment, actor: Actor, name: str, now: datetime
) -> tuple[ApiKey, str]:
    """A new key for `environment`; the plain key is returned once and never stored."""
    name = " ".join((name or "").split())
    if not name:
        raise ServiceError("Give the key a name, e.g. the server that uses it.", field="name")
    if len(name) > 80:
        raise ServiceError("The name can be at most 80 characters.", field="name")
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        key = ApiKey.objects.create(
            organisation_id=environment.organisation_id,
            environment=environment,
            name=name,
            prefix=plain[:10],
            key_hash=_key_digest(plain),
            created_at=now,
            created_by=actor.user,
        )
        audit_record(
            organisation=environment.organisation,
            actor=actor,
            action="api_key.created",
            target=key,
            target_label=f"{name} ({environment.name})",
            now=now,
        )
    return key, plain


def api_key_revoke(*, key: ApiKey, actor: Actor, now: datetime) -> ApiKey:
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().select_related("environment").get(pk=key.pk)
        if key.revoked_at is not None:
            raise ServiceError("This key is already revoked.")
        key.revoked_at = now
        key.save(update_fields=["revoked_at"])
        audit_record(
            organisation=key.environment.organisation,
            actor=actor,
            action="api_key.revoked",
            target=key,
            target_label=f"{key.name} ({key.environment.name})",
            now=now,
        )
    return key


def api_key_authenticate(*, plain: str, now: datetime) -> ApiKey | None:
    """The live key for an `Authorization: Bearer` value, or None (unknown or revoked)."""
    if not plain.startswith(KEY_PREFIX):
        return None
    key = (
        ApiKey.objects.select_related("environment", "organisation")
        .filter(key_hash=_key_digest(plain), revoked_at__isnull=True)
        .first()
    )
    if key is None or key.organisation.status != Organisation.Status.ACTIVE:
        return None
    # Last-used time to the minute: one write a minute per key, not one per request.
    if key.last_used_at is None or key.last_used_at < now - timedelta(minutes=1):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


# Ingestion ------------------------------------------------------------------------------------


@dataclass
class IngestResult:
    status_code: int
    body: dict
    errors: list[dict] = field(default_factory=list)


class _Row(NamedTuple):
    flow_id: int
    record_key: str
    status: str
    direction: str
    synced_at: datetime
    message: str
    snapshot: str | None


def _parse_instant(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _storable(text: str) -> bool:
    """Postgres text and jsonb hold neither NUL nor unpaired surrogates (not UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


UNSTORABLE = "Text cannot contain NUL characters or unpaired surrogates."
NOT_FINITE = "A snapshot cannot hold NaN or Infinity (nor a number as large as 1e400)."


def _snapshot_problem(snapshot) -> str | None:
    """Why jsonb would refuse `snapshot`, if it would: unstorable text, in a key or a value,
    or a number Python reads and JSON does not have. Iterative: nesting can be deep."""
    stack = [snapshot]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _storable(item):
                return UNSTORABLE
        elif isinstance(item, float):
            if not math.isfinite(item):
                return NOT_FINITE
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _validate(records, *, flows: dict[str, int], now: datetime) -> tuple[list[_Row], list[dict]]:
    rows, errors = [], []

    def error(index, name, message):
        errors.append({"index": index, "field": name, "message": message})

    for index, record in enumerate(records):
        if not isinstance(record, dict):
            error(index, None, "Each record must be a JSON object.")
            continue
        flow_value = record.get("flow_id")
        # The canonical spelling is a plain dict hit; other spellings of a UUID are normalised.
        flow_pk = flows.get(flow_value) if isinstance(flow_value, str) else None
        if flow_pk is None:
            with contextlib.suppress(ValueError):
                flow_pk = flows.get(str(UUID(str(flow_value))))
        if flow_pk is None:
            error(index, "flow_id", "Unknown ProcessFlow for this environment.")
        raw_key = record.get("record_key")
        key = raw_key.strip(ASCII_SPACE) if isinstance(raw_key, str) else None
        if not key or len(raw_key) > 255:
            error(index, "record_key", "A record key of 1 to 255 characters is required.")
        elif not _storable(key):
            error(index, "record_key", UNSTORABLE)
        status = record.get("status")
        if status not in ("success", "failed"):
            error(index, "status", 'Must be "success" or "failed".')
        direction = record.get("direction")
        if direction not in ("inbound", "outbound"):
            error(index, "direction", 'Must be "inbound" or "outbound".')
        synced_at = _parse_instant(record.get("synced_at"))
        if synced_at is None:
            error(index, "synced_at", "An ISO-8601 date-time with a UTC offset is required.")
        elif not (now - OLDEST <= synced_at <= now + NEWEST):
            error(index, "synced_at", "Must be within the last 400 days and not in the future.")
        message = record.get("message", "")
        if message is None:
            message = ""
        if not isinstance(message, str) or len(message) > MAX_MESSAGE:
            error(index, "message", f"At most {MAX_MESSAGE} characters of text.")
        elif not _storable(message):
            error(index, "message", UNSTORABLE)
        snapshot = record.get("snapshot")
        snapshot_json = None
        if snapshot is not None:
            if not isinstance(snapshot, dict | list):
                error(index, "snapshot", "A snapshot must be a JSON object or array.")
            else:
                snapshot_json = json.dumps(snapshot, separators=(",", ":"))
                if len(snapshot_json.encode()) > MAX_SNAPSHOT_BYTES:
                    error(index, "snapshot", "A snapshot can be at most 64 KB.")
                elif problem := _snapshot_problem(snapshot):
                    error(index, "snapshot", problem)
        if not errors or errors[-1]["index"] != index:
            rows.append(
                _Row(
                    flow_id=flow_pk,
                    record_key=key,
                    status=status,
                    direction=direction,
                    # In UTC: Python takes offsets up to 23:59, Postgres only up to 15:59.
                    synced_at=synced_at.astimezone(UTC),
                    message=message,
                    snapshot=snapshot_json,
                )
            )
    return rows, errors


class _PlainRecord(msgspec.Struct, forbid_unknown_fields=True):
    """A record as the runtime sends it, without a snapshot: what the fast path takes."""

    flow_id: str
    record_key: str
    status: Literal["success", "failed"]
    direction: Literal["inbound", "outbound"]
    synced_at: str
    message: str | None = ""
    snapshot: None = None


class _PlainBatch(msgspec.Struct, forbid_unknown_fields=True):
    records: list[_PlainRecord]


_plain_batch = msgspec.json.Decoder(_PlainBatch)


def _validate_plain(body: bytes, *, flows: dict[str, int], now: datetime) -> list[_Row] | None:
    """The rows of a batch whose every record is plainly valid, or None: then the full check
    (`_parse_records`, `_validate`) answers, with every error.

    Never laxer than the full check, only stricter: anything it is unsure of it leaves to it
    (docs/architecture.md#decision-the-ingest-path-msgspec-binary-copy-raw-sql).
    msgspec refuses what json.loads refuses (bad JSON or UTF-8, unpaired surrogates, NaN, a
    byte-order mark) and, with unknown fields forbidden, never skips over a value json.loads
    would refuse (too deep, too many digits). The checks left to Python are the full
    check's own: the same functions, the same bounds.
    """
    try:
        records = _plain_batch.decode(body).records
    except (msgspec.MsgspecError, ValueError):
        return None
    if not 0 < len(records) <= MAX_RECORDS:
        return None
    oldest, newest = now - OLDEST, now + NEWEST
    rows, texts = [], []
    for record in records:
        flow_pk = flows.get(record.flow_id)
        raw_key = record.record_key
        key = raw_key.strip(ASCII_SPACE)
        message = record.message or ""
        try:
            synced_at = datetime.fromisoformat(record.synced_at)
        except ValueError:
            return None
        if (
            flow_pk is None
            or not key
            or len(raw_key) > 255
            or len(message) > MAX_MESSAGE
            or synced_at.tzinfo is None
            or not oldest <= synced_at <= newest
        ):
            return None
        rows.append(
            _Row(
                flow_pk,
                key,
                record.status,
                record.direction,
                synced_at.astimezone(UTC),
                message,
                None,
            )
        )
        texts.append(key)
        texts.append(message)
    # One check for all the text: Python never pairs surrogates of two strings on joining.
    if not _storable("".join(texts)):
        return None
    return rows


def sync_info_ingest(
    *, key: ApiKey, idempotency_key: str, body: bytes, now: datetime
) -> IngestResult:
    """POST /api/v1/sync-info: validate, store and count one batch (see the module docstring)."""
    raw_key = idempotency_key or ""
    # Spaces and tabs around a header value are not part of it (RFC 9110, section 5.5).
    idempotency_key = raw_key.strip(" \t")
    if not idempotency_key or len(raw_key) > 128 or CONTROL.search(idempotency_key):
        return IngestResult(
            400,
            {
                "error": "An Idempotency-Key header of 1 to 128 characters, none of them "
                "control characters, is required."
            },
        )
    digest = hashlib.sha256(body).hexdigest()
    previous, flows = _previous_and_flows(key, idempotency_key)
    if previous is not None:
        return _replay(previous, digest)
    rows = _validate_plain(body, flows=flows, now=now)
    if rows is not None:
        return _batch_save(
            key=key, idempotency_key=idempotency_key, digest=digest, rows=rows, now=now
        )
    records = _parse_records(body)
    if isinstance(records, IngestResult):
        return records
    rows, errors = _validate(records, flows=flows, now=now)
    if errors:
        return IngestResult(
            400, {"error": "The batch was rejected; nothing was stored.", "errors": errors}, errors
        )
    return _batch_save(key=key, idempotency_key=idempotency_key, digest=digest, rows=rows, now=now)


def _parse_records(body: bytes) -> list | IngestResult:
    """The batch's records, or the 400 / 413 answer when the body is not a batch of them."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return IngestResult(400, {"error": "The body is not valid JSON."})
    except RecursionError:
        return IngestResult(400, {"error": "The body is nested too deeply."})
    except ValueError:
        # Python refuses to read an integer of more than 4,300 digits.
        return IngestResult(400, {"error": "The body has a number with too many digits."})
    records = payload.get("records") if isinstance(payload, dict) else None
    if not isinstance(records, list) or not records:
        return IngestResult(
            400, {"error": 'The body must be {"records": [ ... ]} with at least one record.'}
        )
    if len(records) > MAX_RECORDS:
        return IngestResult(413, {"error": f"A batch holds at most {MAX_RECORDS} records."})
    return records


class _Previous(NamedTuple):
    """The batch first sent with an idempotency key: what a resend is answered with."""

    body_sha256: str
    status_code: int
    response: dict


def _previous_and_flows(key: ApiKey, idempotency_key: str) -> tuple[_Previous | None, dict]:
    """In one query: the batch already sent with `idempotency_key`, if any, and the key's
    environment's ProcessFlows (primary key by public id, canonical spelling)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT b.body_sha256, b.status_code, b.response::text, "
            "ARRAY(SELECT f.public_id::text FROM subscriptions_processflow f "
            "WHERE f.organisation_id = %s AND f.environment_id = %s ORDER BY f.id), "
            "ARRAY(SELECT f.id FROM subscriptions_processflow f "
            "WHERE f.organisation_id = %s AND f.environment_id = %s ORDER BY f.id) "
            "FROM (SELECT 1) AS one LEFT JOIN usage_ingestbatch b "
            # The organisation too: on a sharded database the lookup stays on its shard
            # (docs/scaling.md).
            "ON b.organisation_id = %s AND b.environment_id = %s AND b.idempotency_key = %s",
            [
                key.organisation_id,
                key.environment_id,
                key.organisation_id,
                key.environment_id,
                key.organisation_id,
                key.environment_id,
                idempotency_key,
            ],
        )
        digest, status_code, response, public_ids, pks = cursor.fetchone()
    previous = None if digest is None else _Previous(digest, status_code, json.loads(response))
    return previous, dict(zip(public_ids, pks, strict=True))


def _batch_save(
    *, key: ApiKey, idempotency_key: str, digest: str, rows: list[_Row], now: datetime
) -> IngestResult:
    """Record the batch, store and count its rows in one transaction; a concurrent twin with
    the same key that won is answered as it was."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO usage_ingestbatch (organisation_id, environment_id, "
                "idempotency_key, body_sha256, status_code, response, record_count, created_at) "
                "VALUES (%s, %s, %s, %s, 201, '{}', %s, %s) RETURNING id",
                [
                    key.organisation_id,
                    key.environment_id,
                    idempotency_key,
                    digest,
                    len(rows),
                    now,
                ],
            )
            (batch_id,) = cursor.fetchone()
            usage = _store(batch_id=batch_id, key=key, rows=rows, now=now)
            response = {"batch": batch_id, "accepted": len(rows), "usage": usage}
            cursor.execute(
                "UPDATE usage_ingestbatch SET response = %s::jsonb WHERE id = %s",
                [json.dumps(response), batch_id],
            )
    except IntegrityError:
        # The same key arrived twice at once: the first one won; answer as it did.
        previous = IngestBatch.objects.get(
            organisation_id=key.organisation_id,
            environment_id=key.environment_id,
            idempotency_key=idempotency_key,
        )
        return _replay(previous, digest)
    return IngestResult(201, response)


def _replay(previous: IngestBatch | _Previous, digest: str) -> IngestResult:
    if previous.body_sha256 != digest:
        return IngestResult(
            409,
            {"error": "This Idempotency-Key was already used for a different batch."},
        )
    return IngestResult(previous.status_code, previous.response)


def _store(*, batch_id: int, key: ApiKey, rows: list[_Row], now: datetime) -> dict:
    organisation = key.organisation
    subscription = subscription_for_ingest(organisation=organisation, now=now)
    retention = ingest_retention(subscription)
    _copy(batch_id=batch_id, key=key, rows=rows, retention=retention)
    return _count(organisation=organisation, subscription=subscription, rows=rows, now=now)


# The types of the COPY's columns, for the binary format (usage/migrations/0004_retention_tiers.py).
_COPY_TYPES = [
    "int8",
    "int8",
    "int8",
    "int8",
    "varchar",
    "varchar",
    "varchar",
    "timestamptz",
    "varchar",
    "bool",
    "int2",
]


def _copy(*, batch_id: int, key: ApiKey, rows: list[_Row], retention: Retention) -> None:
    columns = (
        "organisation_id, environment_id, flow_id, batch_id, record_key, status, direction, "
        "synced_at, message, has_snapshot, retention_days"
    )
    tier = retention.days(SYNC_INFO_TABLE)
    values = [
        (
            key.organisation_id,
            key.environment_id,
            row.flow_id,
            batch_id,
            row.record_key,
            row.status,
            row.direction,
            row.synced_at,
            row.message,
            row.snapshot is not None,
            tier,
        )
        for row in rows
    ]
    with connection.cursor() as cursor:
        raw = cursor.cursor
        if not any(row.snapshot for row in rows):
            # Nothing links to the rows: the identity column numbers them (no id round trip).
            # Binary: Postgres parses no text, psycopg formats none.
            with raw.copy(f"COPY usage_syncinfo ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_COPY_TYPES)
                for value in values:
                    copy.write_row(value)
            return
        # Snapshots point at their Sync Info row: take the ids first.
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('usage_syncinfo', 'id')) "
            "FROM generate_series(1, %s)",
            [len(rows)],
        )
        ids = [row[0] for row in cursor.fetchall()]
        with raw.copy(f"COPY usage_syncinfo (id, {columns}) FROM STDIN") as copy:
            for pk, value in zip(ids, values, strict=True):
                copy.write_row((pk, *value))
        snapshots = [(pk, row) for pk, row in zip(ids, rows, strict=True) if row.snapshot]
        snapshot_tier = retention.days(SNAPSHOT_TABLE)
        with raw.copy(
            "COPY usage_snapshot (sync_info_id, organisation_id, synced_at, payload, "
            "retention_days) FROM STDIN"
        ) as copy:
            for pk, row in snapshots:
                copy.write_row(
                    (pk, key.organisation_id, row.synced_at, row.snapshot, snapshot_tier)
                )


def _count(
    *,
    organisation: Organisation,
    subscription: Subscription | None,
    rows: list[_Row],
    now: datetime,
) -> dict:
    """Add the rows to the usage counters, check the alerts and say the current month's usage."""
    _counters_add(organisation=organisation, buckets=_day_buckets(organisation, subscription, rows))
    if subscription is None:
        return {"used": None, "limit": None}
    current_start, current_end = usage_month_of(subscription, now)
    used = month_usage(organisation=organisation, month_start=current_start)
    limit = subscription.plan.monthly_transactions
    alerts_check(
        subscription=subscription,
        month_start=current_start,
        month_end=current_end,
        used=used,
        now=now,
    )
    return {
        "month_start": current_start.isoformat(),
        "month_end": current_end.isoformat(),
        "used": used,
        "limit": limit,
    }


def _day_buckets(
    organisation: Organisation, subscription: Subscription | None, rows: list[_Row]
) -> dict[tuple[datetime, object], int]:
    """The rows counted per (usage month start, local day)."""
    zone = organisation.tzinfo
    months: list[tuple[datetime, datetime]] = []

    def month_of(moment: datetime) -> datetime:
        # Nearly every record falls in one or two usage months: compute each once.
        for start, end in months:
            if start <= moment < end:
                return start
        if subscription is not None:
            bounds = usage_month_of(subscription, moment)
        else:
            local = moment.astimezone(zone)
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            bounds = (start, start + relativedelta(months=1))
        months.append(bounds)
        return bounds[0]

    buckets: dict[tuple[datetime, object], int] = {}
    for row in rows:
        bucket = (month_of(row.synced_at), row.synced_at.astimezone(zone).date())
        buckets[bucket] = buckets.get(bucket, 0) + 1
    return buckets


def _counters_add(*, organisation: Organisation, buckets: dict) -> None:
    """One upsert, rows in a fixed order, so concurrent batches lock the same rows in the same
    order (no deadlock)."""
    ordered = sorted(buckets.items())
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_usagecounter (organisation_id, month_start, day, transactions) "
            "SELECT %s, b.month_start, b.day, b.transactions "
            "FROM unnest(%s::timestamptz[], %s::date[], %s::bigint[]) "
            "WITH ORDINALITY AS b(month_start, day, transactions, position) "
            "ORDER BY b.position "
            "ON CONFLICT (organisation_id, month_start, day) "
            "DO UPDATE SET transactions = usage_usagecounter.transactions + EXCLUDED.transactions",
            [
                organisation.pk,
                [month for (month, _), _ in ordered],
                [day for (_, day), _ in ordered],
                [count for _, count in ordered],
            ],
        )


def month_usage(*, organisation: Organisation, month_start: datetime) -> int:
    """The organisation's transactions in the usage month starting at `month_start`. Raw SQL:
    it runs after every batch, and the ORM's aggregate costs more Python than the query."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(transactions), 0)::bigint FROM usage_usagecounter "
            "WHERE organisation_id = %s AND month_start = %s",
            [organisation.pk, month_start],
        )
        return cursor.fetchone()[0]
