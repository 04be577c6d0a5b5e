"""The organisation's data deleted for good: 30 days after its subscription ended, or on an
approved GDPR request for the whole organisation.

The rule (article section 8): "30 days later all
organisation data is deleted for good, except invoices and payment records, which are kept for
accounting and tax law." Kept, therefore: the organisation row itself (marked `deleted`, so
its pages 404 and nobody can sign in to it), the subscription row and its plan changes,
invoices with their lines and PDF documents, payments, payment methods (payments point at
them), dunning cases and steps, overage charges, credit notes and refunds, the customer
balance's entries (credits and the invoices they were applied to), and the retention records
themselves (DeletionRecord, DataDeletionRequest: the proof of what was deleted and why). User
accounts are kept too: a person may belong to other organisations, and is told on sign-in that
this one was deleted; deleting a person is a GDPR "person" request.

Everything else of the organisation goes, table by table, each in small transactions
(bounded batches for the big tables), so a crash mid-way leaves a consistent database and a
rerun carries on where it stopped. Progress is kept on one DeletionRecord created first and
marked `completed` at the end, in the same transaction that marks the organisation deleted;
a rerun after a crash reuses that record and adds to its counts. Once the organisation is
deleted, a second call is refused (ServiceError DeletionError.ALREADY_DELETED) and changes nothing.

Reminders: one email 7 days and one 1 day
before the deletion date to the primary email and the active Admins and Billing contacts.
The claim for "sent once" is the OutgoingEmail rows themselves: the reminder is queued under
the template label `data_deletion_reminder:7` or `:1`, created after the subscription ended,
checked and written while the subscription row is locked (SELECT ... FOR UPDATE), so two runs
at once cannot both send it. A resubscribe then a later cancellation counts from the new end.
"""

import logging
import uuid
from datetime import datetime, timedelta
from enum import StrEnum

from django.db import connection, models, transaction
from django.utils import timezone

from accounts.audit import Actor
from accounts.emails import email_queue, email_render
from accounts.models import (
    AuditEvent,
    BillingRecipient,
    Invitation,
    Membership,
    Organisation,
    OutgoingEmail,
    PrimaryEmailChange,
)
from accounts.selectors import account_recipients
from billing.models import BillingProfile
from core.errors import ServiceError
from core.links import absolute_url, organisation_day
from retention.models import DeletionRecord
from sso.models import SsoAttempt, SsoConfiguration, SsoDomain, SsoRequest
from subscriptions.cancellation import DATA_KEPT_AFTER_END, data_deletion_at
from subscriptions.models import Connection, Environment, ProcessFlow, Subscription
from support.models import SupportTicket, TicketAttachment, TicketMessage
from usage.models import (
    AlertSettings,
    AlertThreshold,
    ApiKey,
    IngestBatch,
    UsageAlert,
    UsageCounter,
)

logger = logging.getLogger(__name__)

BATCH_SIZE = 10_000
SMALL_BATCH_SIZE = 1_000
REMINDER_DAYS = (7, 1)
REMINDER_TEMPLATE = "data_deletion_reminder"
DELETED_TEMPLATE = "data_deleted"

# (counts key, table, key columns). Sync Info and snapshots are partitioned: their primary key
# includes synced_at, and they are deleted through the (organisation_id, synced_at) indexes.
PARTITIONED_TABLES = (
    ("snapshots", "usage_snapshot", ("synced_at", "sync_info_id")),
    ("sync_info", "usage_syncinfo", ("synced_at", "id")),
)

# Deleted in this order: rows pointing at environments, connections and flows first (the
# PROTECT foreign keys), memberships late so a crash before them still knows who to tell.
MODEL_STEPS: tuple[tuple[str, type[models.Model]], ...] = (
    ("usage_counters", UsageCounter),
    ("usage_alerts", UsageAlert),
    ("ingest_batches", IngestBatch),
    ("api_keys", ApiKey),
    ("usage_alert_thresholds", AlertThreshold),
    ("usage_alert_settings", AlertSettings),
    ("process_flows", ProcessFlow),
    ("connections", Connection),
    ("environments", Environment),
    ("invitations", Invitation),
    ("primary_email_changes", PrimaryEmailChange),
    ("audit_events", AuditEvent),
    ("outgoing_emails", OutgoingEmail),
    ("billing_recipients", BillingRecipient),  # after the emails that point at them
    ("billing_profiles", BillingProfile),
    ("sso_attempts", SsoAttempt),
    ("sso_requests", SsoRequest),
    ("sso_domains", SsoDomain),
    ("sso_configurations", SsoConfiguration),
    ("support_attachments", TicketAttachment),
    ("support_messages", TicketMessage),
    ("support_tickets", SupportTicket),
    ("memberships", Membership),
)
COUNT_KEYS = tuple(key for key, _, _ in PARTITIONED_TABLES) + tuple(key for key, _ in MODEL_STEPS)


class DeletionError(StrEnum):
    """Why organisation_data_delete refused (GDPR requests rerun it and compare)."""

    ALREADY_DELETED = "already_deleted"


def _delete_batched(*, table: str, keys: tuple[str, ...], organisation_id: int, size: int) -> int:
    """DELETE the organisation's rows of `table`, `size` at a time, each batch committed."""
    columns = ", ".join(keys)
    sql = (
        f"DELETE FROM {table} WHERE ({columns}) IN "  # noqa: S608 - fixed names, no input
        f"(SELECT {columns} FROM {table} WHERE organisation_id = %s LIMIT %s)"
    )
    deleted = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [organisation_id, size])
            rows = cursor.rowcount
        deleted += rows
        if rows < size:
            return deleted


def _former_member_ids(organisation: Organisation) -> list[int]:
    return sorted(
        Membership.objects.filter(organisation=organisation).values_list("user_id", flat=True)
    )


def _record_start(*, organisation, kind, actor, now, detail) -> DeletionRecord:
    """The progress record: reused when an earlier run stopped mid-way."""
    with transaction.atomic():
        organisation = Organisation.objects.select_for_update().get(pk=organisation.pk)
        if organisation.status == Organisation.Status.DELETED:
            raise ServiceError(
                f"{organisation.name} was already deleted.", code=DeletionError.ALREADY_DELETED
            )
        record = (
            DeletionRecord.objects.select_for_update()
            .filter(organisation=organisation, kind=kind, counts__completed=False)
            .order_by("pk")
            .first()
        )
        member_ids = _former_member_ids(organisation)
        if record is None:
            return DeletionRecord.objects.create(
                organisation=organisation,
                organisation_label=organisation.name,
                kind=kind,
                counts={
                    "completed": False,
                    "former_member_ids": member_ids,
                    **dict.fromkeys(COUNT_KEYS, 0),
                },
                detail=detail[:255],
                actor=actor.user if actor is not None else None,
                created_at=now,
            )
        known = set(record.counts.get("former_member_ids", []))
        record.counts["former_member_ids"] = sorted(known | set(member_ids))
        record.save(update_fields=["counts"])
        return record


def _add(record: DeletionRecord, key: str, deleted: int) -> None:
    # Saved after every table so a crash keeps the counts of the tables already done.
    with transaction.atomic():
        record.counts[key] = record.counts.get(key, 0) + deleted
        record.save(update_fields=["counts"])


def organisation_data_delete(
    *,
    organisation: Organisation,
    kind: str,
    actor: Actor | None,
    now: datetime,
    detail: str = "",
) -> DeletionRecord:
    """Delete for good everything of `organisation` but its billing records (see the module
    docstring for what stays), mark it deleted, and return the one DeletionRecord with the
    counts per kind of row and `former_member_ids` (user ids, no emails).

    `kind` is DeletionRecord.Kind.CANCELLATION or GDPR_ORGANISATION. Refused with
    ServiceError(DeletionError.ALREADY_DELETED) once the organisation is deleted.
    """
    if kind not in (DeletionRecord.Kind.CANCELLATION, DeletionRecord.Kind.GDPR_ORGANISATION):
        raise ValueError(f"Not an organisation deletion kind: {kind!r}")
    record = _record_start(
        organisation=organisation, kind=kind, actor=actor, now=now, detail=detail
    )
    for key, table, keys in PARTITIONED_TABLES:
        deleted = _delete_batched(
            table=table, keys=keys, organisation_id=organisation.pk, size=BATCH_SIZE
        )
        _add(record, key, deleted)
    for key, model in MODEL_STEPS:
        deleted = _delete_batched(
            table=model._meta.db_table,
            keys=(model._meta.pk.column,),
            organisation_id=organisation.pk,
            size=SMALL_BATCH_SIZE,
        )
        _add(record, key, deleted)
    with transaction.atomic():
        organisation = Organisation.objects.select_for_update().get(pk=organisation.pk)
        organisation.status = Organisation.Status.DELETED
        organisation.save(update_fields=["status"])
        record.counts["completed"] = True
        record.created_at = now
        record.save(update_fields=["counts", "created_at"])
    logger.info("Organisation %s deleted (%s): %s", organisation.pk, kind, record.counts)
    return record


# The scheduled job ---------------------------------------------------------------------


def _ended():
    """Ended subscriptions of organisations not deleted yet, oldest end first."""
    return Subscription.objects.filter(
        status=Subscription.Status.ENDED,
        organisation__status=Organisation.Status.ACTIVE,
        ended_at__isnull=False,
    ).order_by("ended_at", "pk")


def _lock_ended(subscription_pk: int) -> Subscription | None:
    """The subscription, locked, if it is still ended and its organisation still active."""
    return (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("organisation", "plan")
        .filter(
            pk=subscription_pk,
            status=Subscription.Status.ENDED,
            organisation__status=Organisation.Status.ACTIVE,
        )
        .first()
    )


def _reminder_send(subscription: Subscription, *, days: int, now: datetime) -> int:
    organisation = subscription.organisation
    label = f"{REMINDER_TEMPLATE}:{days}"
    if OutgoingEmail.objects.filter(
        organisation=organisation, template=label, created_at__gte=subscription.ended_at
    ).exists():
        return 0
    deletion_at = data_deletion_at(subscription)
    context = {
        "organisation": organisation,
        "subscription": subscription,
        "plan": subscription.plan,
        "ended_at": subscription.ended_at,
        "deletion_at": deletion_at,
        "days": days,
        "choose_plan_url": absolute_url("billing:choose_plan", organisation.slug),
        "configuration_export_url": absolute_url(
            "retention:configuration_export", organisation.slug
        ),
        "sync_info_export_url": absolute_url("usage:sync_info_export", organisation.slug),
    }
    with timezone.override(organisation.tzinfo):
        subject, body_text, body_html = email_render(REMINDER_TEMPLATE, context)
    recipients = account_recipients(organisation=organisation)
    message_id = uuid.uuid4()  # one message to several people: one Notifications entry
    queued = [
        email_queue(
            to=address,
            subject=subject,
            body_text=body_text,
            body_html=body_html,
            template=label,
            organisation=organisation,
            message_id=message_id,
        ).pk
        for address in recipients
    ]
    # Dated by the job's `now`, as the claim above compares it with ended_at (`tick --now`).
    OutgoingEmail.objects.filter(pk__in=queued).update(created_at=now)
    return len(recipients)


def data_deletion_reminders_send(*, now: datetime) -> int:
    """Send the 7-day and 1-day reminders that are due, each once. Returns emails queued."""
    latest_reminder = timedelta(days=max(REMINDER_DAYS))
    due = _ended().filter(
        ended_at__lte=now - DATA_KEPT_AFTER_END + latest_reminder,
        ended_at__gt=now - DATA_KEPT_AFTER_END,
    )
    queued = 0
    for pk in list(due.values_list("pk", flat=True)):
        with transaction.atomic():
            subscription = _lock_ended(pk)
            if subscription is None:
                continue
            left = data_deletion_at(subscription) - now
            # Only the nearest reminder: a job that was down for days does not send both.
            days = min((d for d in REMINDER_DAYS if left <= timedelta(days=d)), default=None)
            if days is not None:
                queued += _reminder_send(subscription, days=days, now=now)
    return queued


def _deleted_email_send(organisation, *, recipients: list[str], ended_at, now) -> None:
    """Not tied to the organisation: none of its emails is kept after the deletion."""
    context = {
        "organisation_name": organisation.name,
        "ended_day": organisation_day(ended_at, organisation),
        "deleted_day": organisation_day(now, organisation),
        "sign_in_url": absolute_url("account_login"),
    }
    subject, body_text, body_html = email_render(DELETED_TEMPLATE, context)
    with transaction.atomic():
        for address in recipients:
            email_queue(
                to=address,
                subject=subject,
                body_text=body_text,
                body_html=body_html,
                template=DELETED_TEMPLATE,
            )


def cancelled_organisations_delete(*, now: datetime) -> int:
    """Delete the data of every organisation whose subscription ended 30 days ago or more.
    Resubscribing before then (the status is no longer "ended") keeps everything.
    Returns how many organisations were deleted.

    Each organisation is claimed with a session advisory lock so two runs never delete the same
    one at once; the subscription status is checked again under its row lock first.
    """
    due = _ended().filter(ended_at__lte=now - DATA_KEPT_AFTER_END)
    deleted = 0
    for pk, organisation_id in list(due.values_list("pk", "organisation_id")):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(hashtext('org-delete'), %s)", [pk])
            if not cursor.fetchone()[0]:
                continue
        try:
            with transaction.atomic():
                subscription = _lock_ended(pk)
                if subscription is None or data_deletion_at(subscription) > now:
                    continue
                organisation = subscription.organisation
                recipients = account_recipients(organisation=organisation)
                ended_at = subscription.ended_at
            record = organisation_data_delete(
                organisation=organisation,
                kind=DeletionRecord.Kind.CANCELLATION,
                actor=None,
                now=now,
                detail=f"Subscription ended on {organisation_day(ended_at, organisation)}.",
            )
            _deleted_email_send(organisation, recipients=recipients, ended_at=ended_at, now=now)
            deleted += 1
            logger.info("Cancelled organisation %s deleted: record %s", organisation_id, record.pk)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(hashtext('org-delete'), %s)", [pk])
    return deleted
