"""Support tickets: written by customers in the portal, worked by ops in Django admin."""

import mimetypes
import re
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from accounts.audit import Actor, audit_record
from accounts.emails import email_send
from accounts.models import Membership, Organisation
from billing.models import Invoice
from core.errors import ServiceError
from core.links import absolute_url
from support.models import SupportTicket, TicketAttachment, TicketMessage

MESSAGE_MAX_CHARS = 10_000
ATTACHMENT_MAX_BYTES = 5 * 1024 * 1024
# What a ticket may carry: screenshots, PDFs (remittance advice, purchase orders), text and CSV.
ATTACHMENT_TYPES = {
    ".pdf": ("application/pdf", b"%PDF-"),
    ".png": ("image/png", b"\x89PNG\r\n\x1a\n"),
    ".jpg": ("image/jpeg", b"\xff\xd8\xff"),
    ".jpeg": ("image/jpeg", b"\xff\xd8\xff"),
    ".txt": ("text/plain", None),
    ".csv": ("text/csv", None),
}


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def _clean_message(body: str) -> str:
    body = (body or "").strip()
    if not body:
        raise ServiceError("Write your message.", field="message")
    if len(body) > MESSAGE_MAX_CHARS:
        raise ServiceError(
            f"The message is {len(body):,} characters long; keep it under "
            f"{MESSAGE_MAX_CHARS:,} (attach a file for long logs).",
            field="message",
        )
    return body


def _check_upload(upload: Upload | None) -> tuple[str, str] | None:
    """(safe filename, content type) of an acceptable attachment, or ServiceError."""
    if upload is None:
        return None
    if len(upload.data) > ATTACHMENT_MAX_BYTES:
        raise ServiceError(
            f"The attachment is {len(upload.data) / 1_048_576:.1f} MB; the limit is 5 MB.",
            field="attachment",
        )
    if not upload.data:
        raise ServiceError("The attachment is empty.", field="attachment")
    # Only the last path part, in plain characters: it goes into a Content-Disposition header.
    name = upload.filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = re.sub(r"[^A-Za-z0-9._ -]", "_", name)[:200] or "attachment"
    extension = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    if extension not in ATTACHMENT_TYPES:
        raise ServiceError("Attach a PDF, PNG, JPEG, TXT or CSV file.", field="attachment")
    content_type, magic = ATTACHMENT_TYPES[extension]
    if magic is not None and not upload.data.startswith(magic):
        raise ServiceError(
            f"The file is not the {extension[1:].upper()} its name says.", field="attachment"
        )
    if magic is None:
        try:
            upload.data.decode("utf-8")
        except UnicodeDecodeError:
            raise ServiceError(
                "Text and CSV files must be UTF-8 text.", field="attachment"
            ) from None
    return name, content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"


def invoice_for_ticket(*, organisation: Organisation, number: str) -> Invoice | None:
    """The organisation's own invoice with that number, or ServiceError. Another organisation's
    number gets the same answer as a number that does not exist."""
    number = (number or "").strip().upper()
    if not number:
        return None
    invoice = Invoice.objects.filter(organisation=organisation, number=number).first()
    if invoice is None:
        raise ServiceError(
            f"{number} is not one of {organisation.name}'s invoices. Check the number in "
            "Settings > Billing > Invoice History.",
            field="invoice_number",
        )
    return invoice


def _add_message(ticket, *, author_kind, actor: Actor, body, upload, checked, now):
    message = TicketMessage.objects.create(
        ticket=ticket,
        organisation_id=ticket.organisation_id,
        author_kind=author_kind,
        author=actor.user,
        author_name=(actor.user.full_name or actor.user.email) if actor.user else "",
        body=body,
        created_at=now,
    )
    if checked is not None:
        filename, content_type = checked
        TicketAttachment.objects.create(
            message=message,
            organisation_id=ticket.organisation_id,
            filename=filename,
            content_type=content_type,
            size=len(upload.data),
            data=upload.data,
            created_at=now,
        )
    return message


def _ticket_invoice(
    organisation: Organisation, membership: Membership, invoice_number: str
) -> Invoice | None:
    """The invoice a new ticket refers to, if it names one."""
    if not invoice_number:
        return None
    # Members do not see invoices, so they cannot name one either.
    if membership.role == Membership.Role.MEMBER:
        raise ServiceError(
            "Only Admins and Billing contacts can refer to an invoice.",
            field="invoice_number",
        )
    return invoice_for_ticket(organisation=organisation, number=invoice_number)


def ticket_create(
    *,
    organisation: Organisation,
    membership: Membership,
    actor: Actor,
    category: str,
    subject: str,
    message: str,
    contact_email: str,
    invoice_number: str = "",
    upload: Upload | None = None,
    now: datetime,
) -> SupportTicket:
    if category not in SupportTicket.Category.values:
        raise ServiceError("Choose a category.", field="category")
    subject = " ".join((subject or "").split())
    if not subject:
        raise ServiceError("Give your ticket a subject.", field="subject")
    body = _clean_message(message)
    checked = _check_upload(upload)
    invoice = _ticket_invoice(organisation, membership, invoice_number)
    with transaction.atomic():
        ticket = SupportTicket.objects.create(
            organisation=organisation,
            category=category,
            subject=subject[:200],
            invoice=invoice,
            urgent=category in SupportTicket.URGENT_CATEGORIES,
            created_by=actor.user,
            contact_email=contact_email.strip().lower(),
            organisation_name=organisation.name,
            created_at=now,
            updated_at=now,
        )
        _add_message(
            ticket,
            author_kind=TicketMessage.Author.CUSTOMER,
            actor=actor,
            body=body,
            upload=upload,
            checked=checked,
            now=now,
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="support.ticket_created",
            target=ticket,
            target_label=f"{ticket.reference}: {ticket.subject}",
            now=now,
        )
        _email(ticket, "support_ticket_received", body=body)
    return ticket


def _email(ticket: SupportTicket, template: str, *, body: str = "") -> None:
    email_send(
        template=template,
        to=ticket.contact_email,
        context={
            "ticket": ticket,
            "body": body,
            "ticket_url": absolute_url(
                "support:ticket", ticket.organisation.slug, ticket.public_id
            ),
        },
        organisation=ticket.organisation,
    )


def _locked(ticket: SupportTicket) -> SupportTicket:
    return (
        SupportTicket.objects.select_for_update(of=("self",))
        .select_related("organisation")
        .get(pk=ticket.pk)
    )


def ticket_reply_customer(
    *, ticket: SupportTicket, actor: Actor, message: str, upload: Upload | None, now: datetime
) -> TicketMessage:
    body = _clean_message(message)
    checked = _check_upload(upload)
    with transaction.atomic():
        ticket = _locked(ticket)
        if ticket.status == SupportTicket.Status.CLOSED:
            raise ServiceError(
                f"{ticket.reference} is closed. Open a new ticket and mention it.", field="message"
            )
        reply = _add_message(
            ticket,
            author_kind=TicketMessage.Author.CUSTOMER,
            actor=actor,
            body=body,
            upload=upload,
            checked=checked,
            now=now,
        )
        ticket.status = SupportTicket.Status.OPEN
        ticket.updated_at = now
        ticket.save(update_fields=["status", "updated_at"])
    return reply


def ticket_reply_support(
    *, ticket: SupportTicket, actor: Actor, message: str, close: bool, now: datetime
) -> TicketMessage:
    """An ops reply: shown in the portal and emailed to the customer."""
    body = _clean_message(message)
    with transaction.atomic():
        ticket = _locked(ticket)
        if ticket.status == SupportTicket.Status.CLOSED:
            raise ServiceError(f"{ticket.reference} is closed; reopen it by a new ticket.")
        reply = _add_message(
            ticket,
            author_kind=TicketMessage.Author.SUPPORT,
            actor=actor,
            body=body,
            upload=None,
            checked=None,
            now=now,
        )
        ticket.status = SupportTicket.Status.CLOSED if close else SupportTicket.Status.ANSWERED
        ticket.closed_at = now if close else None
        ticket.updated_at = now
        if ticket.assigned_to_id is None:
            ticket.assigned_to = actor.user
        ticket.save(update_fields=["status", "closed_at", "updated_at", "assigned_to"])
        _email(ticket, "support_ticket_reply", body=body)
    return reply


def ticket_assign(*, ticket: SupportTicket, assignee, now: datetime) -> SupportTicket:
    with transaction.atomic():
        ticket = _locked(ticket)
        ticket.assigned_to = assignee
        ticket.updated_at = now
        ticket.save(update_fields=["assigned_to", "updated_at"])
    return ticket


def ticket_close(*, ticket: SupportTicket, actor: Actor, now: datetime) -> bool:
    """Close the ticket; returns False when it already was."""
    with transaction.atomic():
        ticket = _locked(ticket)
        if ticket.status == SupportTicket.Status.CLOSED:
            return False
        ticket.status = SupportTicket.Status.CLOSED
        ticket.closed_at = now
        ticket.updated_at = now
        ticket.save(update_fields=["status", "closed_at", "updated_at"])
        _email(ticket, "support_ticket_closed")
    return True
