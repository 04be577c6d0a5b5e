"""Reads of support tickets, scoped to the organisation and to what the role may see."""

from django.db.models import Prefetch, QuerySet
from django.http import Http404

from accounts.models import Membership
from support.models import SupportTicket, TicketAttachment, TicketMessage


def tickets_visible(*, membership: Membership) -> QuerySet[SupportTicket]:
    """Admins and Billing contacts see all of the organisation's tickets (they may name
    invoices); a Member sees the tickets they wrote."""
    tickets = SupportTicket.objects.filter(organisation_id=membership.organisation_id)
    if membership.role == Membership.Role.MEMBER:
        tickets = tickets.filter(created_by_id=membership.user_id)
    return tickets.select_related("invoice", "created_by")


def ticket_get(*, membership: Membership, public_id) -> SupportTicket:
    ticket = (
        tickets_visible(membership=membership)
        .prefetch_related(
            Prefetch(
                "messages",
                queryset=TicketMessage.objects.prefetch_related(
                    Prefetch(
                        "attachments",
                        queryset=TicketAttachment.objects.only(
                            "id", "public_id", "message_id", "filename", "size"
                        ),
                    )
                ),
            )
        )
        .filter(public_id=public_id)
        .first()
    )
    if ticket is None:
        raise Http404("No such ticket.")
    return ticket


def attachment_get(*, membership: Membership, public_id) -> TicketAttachment:
    attachment = TicketAttachment.objects.filter(
        public_id=public_id,
        organisation_id=membership.organisation_id,
        message__ticket__in=tickets_visible(membership=membership),
    ).first()
    if attachment is None:
        raise Http404("No such attachment.")
    return attachment
