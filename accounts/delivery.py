"""Sending what accounts.emails recorded: one message by the Celery task, the stragglers by
the deliver_pending_emails job. Imports nothing that queues, so the task module can import it.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction

from accounts.models import OutgoingEmail

# The logger's name from before delivery had its own module: log searches keep matching.
logger = logging.getLogger("accounts.emails")

MAX_ATTEMPTS = 5


def email_deliver(*, email_id: int, now: datetime) -> bool:
    """Send one queued email. Claims the row first, so it is never sent twice at once.

    An email to a billing recipient removed since it was queued is withheld, never sent
    (docs/architecture.md#decision-billing-recipients)."""
    with transaction.atomic():
        record = (
            OutgoingEmail.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("billing_recipient")
            .filter(
                pk=email_id, status__in=[OutgoingEmail.Status.QUEUED, OutgoingEmail.Status.FAILED]
            )
            .first()
        )
        if record is None:
            return False
        if record.billing_recipient is not None and record.billing_recipient.removed_at:
            record.status = OutgoingEmail.Status.WITHHELD
            record.save(update_fields=["status"])
            return False
        message = EmailMultiAlternatives(
            subject=record.subject,
            body=record.body_text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[record.to_email],
        )
        if record.body_html:
            message.attach_alternative(record.body_html, "text/html")
        record.attempts += 1
        try:
            message.send()
        except Exception as error:  # noqa: BLE001 - SMTP errors vary; record and retry later
            record.status = OutgoingEmail.Status.FAILED
            record.last_error = f"{type(error).__name__}: {error}"[:2000]
            record.save(update_fields=["status", "attempts", "last_error"])
            logger.warning(
                "Email %s failed: %s",
                record.pk,
                record.last_error,
                extra={"organisation_id": record.organisation_id},
            )
            return False
        record.status = OutgoingEmail.Status.SENT
        record.sent_at = now
        record.save(update_fields=["status", "attempts", "sent_at"])
        return True


def email_deliver_pending(*, now: datetime, limit: int = 200) -> int:
    """Deliver emails still queued a minute after they were created, or failed and retryable."""
    due = (
        OutgoingEmail.objects.filter(
            status__in=[OutgoingEmail.Status.QUEUED, OutgoingEmail.Status.FAILED],
            attempts__lt=MAX_ATTEMPTS,
            created_at__lte=now - timedelta(minutes=1),
        )
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(email_deliver(email_id=pk, now=now) for pk in list(due))
