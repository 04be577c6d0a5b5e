"""One way to send email: render a template set, record it, deliver after commit.

Templates live in templates/emails/<name>/subject.txt, body.txt and body.html. Every message
is stored as an OutgoingEmail (per organisation when there is one) before it is sent, so the
portal can show what was sent and a delivery that failed is retried by a scheduled job.
"""

import logging
import uuid
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import Organisation, OutgoingEmail
from core.queueing import enqueue

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


def email_render(template: str, context: dict) -> tuple[str, str, str]:
    context = {"product_name": settings.PRODUCT_NAME, "site_url": settings.SITE_URL, **context}
    subject = render_to_string(f"emails/{template}/subject.txt", context)
    subject = " ".join(subject.split())
    body_text = render_to_string(f"emails/{template}/body.txt", context)
    body_html = render_to_string(f"emails/{template}/body.html", context)
    return subject, body_text, body_html


def email_send(
    *,
    template: str,
    to: str | list[str],
    context: dict,
    organisation: Organisation | None = None,
) -> list[OutgoingEmail]:
    """Render `template` and queue one message per recipient, delivered after commit.

    Dates in the message show in the organisation's time zone.
    """
    zone = organisation.tzinfo if organisation is not None else UTC
    with timezone.override(zone):
        subject, body_text, body_html = email_render(
            template, {"organisation": organisation, **context}
        )
    recipients = [to] if isinstance(to, str) else list(to)
    # One message to several people: the Notifications page lists it once, with its recipients.
    message_id = uuid.uuid4()
    return [
        email_queue(
            message_id=message_id,
            to=address,
            subject=subject,
            body_text=body_text,
            body_html=body_html,
            template=template,
            organisation=organisation,
        )
        for address in recipients
    ]


def email_queue(
    *,
    to: str,
    subject: str,
    body_text: str,
    body_html: str = "",
    template: str,
    organisation: Organisation | None = None,
    message_id: uuid.UUID | None = None,
) -> OutgoingEmail:
    """Record one message to one address; pass the same `message_id` for every recipient of
    one message (email_send does), or each row is a message of its own."""
    record = OutgoingEmail.objects.create(
        message_id=message_id or uuid.uuid4(),
        organisation=organisation,
        to_email=to,
        subject=subject[:255],
        body_text=body_text,
        body_html=body_html,
        template=template,
    )
    transaction.on_commit(lambda: _enqueue_delivery(record.pk))
    return record


# The Celery task that delivers one email. It lives in accounts.tasks, which imports this
# module, so the task plugs itself in here when its module loads (AccountsConfig.ready imports
# it) and queueing needs no import back.
_delivery_task = None


def delivery_task_register(task) -> None:
    global _delivery_task
    _delivery_task = task


def _enqueue_delivery(email_id: int) -> None:
    if _delivery_task is None:
        raise RuntimeError("accounts.tasks was not imported: no task delivers emails.")
    enqueue(_delivery_task, email_id, catch_up="deliver_pending_emails")


def email_deliver(*, email_id: int, now: datetime) -> bool:
    """Send one queued email. Claims the row first, so it is never sent twice at once."""
    with transaction.atomic():
        record = (
            OutgoingEmail.objects.select_for_update(skip_locked=True)
            .filter(
                pk=email_id, status__in=[OutgoingEmail.Status.QUEUED, OutgoingEmail.Status.FAILED]
            )
            .first()
        )
        if record is None:
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
