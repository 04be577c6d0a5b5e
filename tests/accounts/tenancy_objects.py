"""Objects of one organisation for the tenancy tests: one of each kind an organisation URL can
name, and a snapshot of what an attacker could change.

Shared by tests/accounts/test_tenancy.py and tests/core/test_url_matrix.py.
"""

import uuid

from django.utils import timezone

from accounts.models import AuditEvent, BillingRecipient, Invitation, Membership, Organisation
from accounts.tokens import new_token
from billing.models import CreditNote, InvoiceDocument
from sso.models import SsoDomain
from subscriptions.models import Connection, Environment, ProcessFlow
from support.models import SupportTicket, TicketMessage
from tests.accounts.factories import InvitationFactory
from tests.billing.factories import issued_invoice
from tests.subscriptions.factories import ProcessFlowFactory
from tests.support.factories import TicketAttachmentFactory
from usage.models import AlertThreshold, ApiKey


def organisation_objects(organisation, *, member, invoice_number, domain):
    """URL parameter values naming `organisation`'s objects: the membership of `member`, a
    pending invitation, a running ProcessFlow, an API key, a usage alert threshold, an SSO
    domain, a billing recipient waiting for confirmation, an invoice with a revised copy and a
    credit note, and a support ticket with an attached file."""
    return {
        "org_slug": organisation.slug,
        "member_id": Membership.objects.get(user=member, organisation=organisation).public_id,
        "invitation_id": InvitationFactory(organisation=organisation).public_id,
        "flow_id": ProcessFlowFactory(environment__organisation=organisation).public_id,
        "plan_code": "standard",
        "key_id": api_key_of(organisation).pk,
        "threshold_id": AlertThreshold.objects.create(
            organisation=organisation, percent=50
        ).public_id,
        "domain_id": SsoDomain.objects.create(organisation=organisation, domain=domain).public_id,
        # A usage month of Usage history: the route is scoped by the slug alone (no object id).
        "month": "2026-11-01",
        "recipient_id": billing_recipient_of(organisation, f"ap@{domain}")[0].public_id,
        **billing_and_support_objects(organisation, invoice_number),
    }


def billing_and_support_objects(organisation, number):
    """An invoice with a revised copy and a credit note, and a support ticket with an
    attached file."""
    invoice = issued_invoice(organisation=organisation, number=number)
    document = InvoiceDocument.objects.create(invoice=invoice, kind="revised", pdf=b"%PDF-1.7")
    credit_note = CreditNote.objects.create(
        organisation=organisation,
        invoice=invoice,
        number=number.replace("INV-", "CN-"),
        reason=CreditNote.Reason.GOODWILL,
        outcome=CreditNote.Outcome.BALANCE,
        currency=invoice.currency,
        subtotal=100,
        tax_amount=0,
        total=100,
        issued_at=timezone.now(),
        pdf=b"%PDF-1.7",
    )
    attachment = TicketAttachmentFactory(message__ticket__organisation=organisation)
    return {
        "invoice_number": invoice.number,
        "document_id": document.pk,
        "credit_note_number": credit_note.number,
        "ticket_id": attachment.message.ticket.public_id,
        "attachment_id": attachment.public_id,
    }


def api_key_of(organisation):
    """An API key of `organisation` (usage:api_key_revoke takes its integer id)."""
    environment = ProcessFlowFactory(environment__organisation=organisation).environment
    return ApiKey.objects.create(
        organisation=organisation,
        environment=environment,
        name="Runtime",
        prefix="ak_test",
        key_hash=uuid.uuid4().hex,
    )


def billing_recipient_of(organisation, email):
    """A billing recipient of `organisation` waiting for confirmation, and its link's token."""
    token, digest = new_token()
    recipient = BillingRecipient.objects.create(
        organisation=organisation,
        email=email,
        token_hash=digest,
        expires_at=timezone.now() + timezone.timedelta(days=7),
    )
    return recipient, token


def snapshot(org):
    """What a request refused by the tenancy rules must leave unchanged."""
    return (
        Organisation.objects.filter(pk=org.pk)
        .values_list("name", "primary_email", "time_zone")
        .get(),
        sorted(
            Membership.objects.filter(organisation=org).values_list("user_id", "role", "status")
        ),
        sorted(
            Invitation.objects.filter(organisation=org).values_list("email", "status", "token_hash")
        ),
        AuditEvent.objects.filter(organisation=org).count(),
        Environment.objects.filter(organisation=org).count(),
        Connection.objects.filter(organisation=org).count(),
        sorted(ProcessFlow.objects.filter(organisation=org).values_list("public_id", "status")),
        sorted(ApiKey.objects.filter(organisation=org).values_list("pk", "name", "revoked_at")),
        sorted(SsoDomain.objects.filter(organisation=org).values_list("domain", flat=True)),
        sorted(AlertThreshold.objects.filter(organisation=org).values_list("percent", flat=True)),
        sorted(SupportTicket.objects.filter(organisation=org).values_list("subject", "status")),
        TicketMessage.objects.filter(organisation=org).count(),
        sorted(
            BillingRecipient.objects.filter(organisation=org).values_list(
                "email", "token_hash", "confirmed_at", "removed_at", "sent_count"
            )
        ),
    )
