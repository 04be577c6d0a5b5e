"""One way to send email: render a template set, record it, deliver after commit.

Templates live in templates/emails/<name>/subject.txt, body.txt and body.html. Every message
is stored as an OutgoingEmail (per organisation when there is one) before it is sent, so the
portal can show what was sent and a delivery that failed is retried by a scheduled job
(accounts.delivery sends them; accounts.tasks runs it in the background).
"""

import uuid
from datetime import UTC

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Lower
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import BillingRecipient, Organisation, OutgoingEmail
from accounts.tasks import deliver_email
from core.queueing import enqueue


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

    Dates in the message show in the organisation's time zone. A recipient that is one of the
    organisation's billing recipients is linked to it, so removing it withholds what is still
    queued (docs/architecture.md#decision-billing-recipients).
    """
    zone = organisation.tzinfo if organisation is not None else UTC
    with timezone.override(zone):
        subject, body_text, body_html = email_render(
            template, {"organisation": organisation, **context}
        )
    recipients = [to] if isinstance(to, str) else list(to)
    # One message to several people: the Notifications page lists it once, with its recipients.
    message_id = uuid.uuid4()
    linked = _billing_recipient_ids(organisation, recipients)
    return [
        email_queue(
            message_id=message_id,
            to=address,
            billing_recipient_id=linked.get(address.lower()),
            subject=subject,
            body_text=body_text,
            body_html=body_html,
            template=template,
            organisation=organisation,
        )
        for address in recipients
    ]


def _billing_recipient_ids(organisation: Organisation | None, addresses: list[str]) -> dict:
    """{lowercased address: id} of the addresses that are live billing recipients of
    `organisation` (pending or confirmed). One query."""
    if organisation is None or not addresses:
        return {}
    rows = (
        BillingRecipient.objects.filter(organisation=organisation, removed_at__isnull=True)
        .annotate(address=Lower("email"))
        .filter(address__in=[address.lower() for address in addresses])
        .values_list("address", "pk")
    )
    return dict(rows)


def email_queue(
    *,
    to: str,
    subject: str,
    body_text: str,
    body_html: str = "",
    template: str,
    organisation: Organisation | None = None,
    message_id: uuid.UUID | None = None,
    billing_recipient_id: int | None = None,
) -> OutgoingEmail:
    """Record one message to one address; pass the same `message_id` for every recipient of
    one message (email_send does), or each row is a message of its own."""
    record = OutgoingEmail.objects.create(
        message_id=message_id or uuid.uuid4(),
        organisation=organisation,
        to_email=to,
        billing_recipient_id=billing_recipient_id,
        subject=subject[:255],
        body_text=body_text,
        body_html=body_html,
        template=template,
    )
    transaction.on_commit(
        lambda: enqueue(deliver_email, record.pk, catch_up="deliver_pending_emails")
    )
    return record
