"""Support tickets for tests that need one in the database without going through the form."""

import factory

from support.models import SupportTicket, TicketAttachment, TicketMessage
from tests.accounts.factories import OrganisationFactory


class SupportTicketFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SupportTicket

    organisation = factory.SubFactory(OrganisationFactory)
    category = SupportTicket.Category.BILLING
    subject = "Help"
    contact_email = "someone@company.test"
    organisation_name = factory.SelfAttribute("organisation.name")


class TicketMessageFactory(factory.django.DjangoModelFactory):
    """A customer's message on a ticket (of a new organisation unless `ticket` is given)."""

    class Meta:
        model = TicketMessage

    ticket = factory.SubFactory(SupportTicketFactory)
    organisation = factory.SelfAttribute("ticket.organisation")
    author_kind = TicketMessage.Author.CUSTOMER
    body = "Hello"


class TicketAttachmentFactory(factory.django.DjangoModelFactory):
    """A small text file attached to a customer's message:
    `TicketAttachmentFactory(message__ticket__organisation=org)` makes the ticket too."""

    class Meta:
        model = TicketAttachment

    message = factory.SubFactory(TicketMessageFactory)
    organisation = factory.SelfAttribute("message.organisation")
    filename = "a.txt"
    content_type = "text/plain"
    data = b"hi"
    size = factory.LazyAttribute(lambda attachment: len(attachment.data))
