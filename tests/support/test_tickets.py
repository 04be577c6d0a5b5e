"""Contact billing support in the portal: tickets, urgency, invoice numbers, replies, and who
sees what."""

import pytest
from django.core import mail
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from accounts.audit import Actor
from support.models import SupportTicket, TicketAttachment, TicketMessage
from support.services import ticket_close, ticket_reply_support
from tests.accounts.factories import UserFactory
from tests.billing.factories import issued_invoice

pytestmark = pytest.mark.django_db

URL = "/o/acme/support/"


def ticket_data(**overrides):
    return {
        "category": "billing",
        "subject": "Question about my invoice",
        "message": "Why was I charged twice?",
        "contact_email": "admin@acme.test",
        "invoice_number": "",
        **overrides,
    }


def state():
    return (
        SupportTicket.objects.count(),
        TicketMessage.objects.count(),
        TicketAttachment.objects.count(),
        len(mail.outbox),
    )


def test_the_page_has_the_billing_email_and_the_have_ready_items(client_for, admin, org):
    body = client_for(admin).get(URL).content.decode()
    assert "mailto:billing@appseconnect.com" in body
    assert "Acme Trading" in body
    assert 'value="admin@acme.test"' in body  # the contact email, prefilled
    assert "No tickets yet." in body


def test_billing_tabs_and_banner_link_to_support(client_for, admin, org):
    body = client_for(admin).get("/o/acme/settings/billing/invoices/").content.decode()
    assert 'href="/o/acme/support/"' in body


def test_create_a_ticket_about_an_own_invoice(client_for, admin, org, committed):
    invoice = issued_invoice(organisation=org, number="INV-2026-000101")
    with committed():
        response = client_for(admin).post(URL, ticket_data(invoice_number="inv-2026-000101 "))
    assert response.status_code == 302
    ticket = SupportTicket.objects.get()
    assert ticket.invoice == invoice
    assert (ticket.organisation_name, ticket.contact_email) == ("Acme Trading", "admin@acme.test")
    assert not ticket.urgent
    assert ticket.messages.get().body == "Why was I charged twice?"
    page = client_for(admin).get(response["Location"]).content.decode()
    assert "INV-2026-000101" in page
    assert "Waiting for support" in page
    assert [m.subject for m in mail.outbox] == [
        f"{ticket.reference} received: Question about my invoice"
    ]


@pytest.mark.parametrize("category", ["account_suspended", "payment_failing"])
def test_urgent_categories_are_flagged(client_for, admin, org, category):
    client_for(admin).post(URL, ticket_data(category=category))
    assert SupportTicket.objects.get().urgent


def test_the_banner_link_preselects_the_urgent_category(client_for, admin, org):
    body = client_for(admin).get(URL + "?category=account_suspended").content.decode()
    assert '<option value="account_suspended" selected>' in body


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"invoice_number": "INV-2026-999999"}, "INV-2026-999999 is not one of Acme Trading"),
        ({"invoice_number": "INV-2026-000202"}, "INV-2026-000202 is not one of Acme Trading"),
        ({"message": "   "}, "This field is required"),
        ({"message": "x" * 10_001}, "keep it under 10,000"),
        ({"subject": ""}, "This field is required"),
        ({"category": "nonsense"}, "Select a valid choice"),
        ({"contact_email": "not-an-email"}, "Enter a valid email address"),
    ],
    ids=[
        "unknown-invoice",
        "other-orgs-invoice",
        "empty",
        "oversized",
        "no-subject",
        "category",
        "email",
    ],
)
def test_bad_tickets_are_refused_and_nothing_changes(
    client_for, admin, org, other_org, overrides, message
):
    issued_invoice(organisation=other_org, number="INV-2026-000202")
    before = state()
    response = client_for(admin).post(URL, ticket_data(**overrides))
    assert response.status_code == 400
    assert message in response.content.decode()
    assert state() == before


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        (SimpleUploadedFile("big.pdf", b"%PDF-" + b"0" * (5 * 1024 * 1024)), "the limit is 5 MB"),
        (SimpleUploadedFile("virus.exe", b"MZ..."), "Attach a PDF, PNG, JPEG, TXT or CSV"),
        (SimpleUploadedFile("fake.pdf", b"<html>"), "not the PDF its name says"),
        (SimpleUploadedFile("log.txt", b"\xff\xfe\x00binary"), "must be UTF-8 text"),
    ],
    ids=["oversized", "type", "disguised", "binary-text"],
)
def test_bad_attachments_are_refused(client_for, admin, org, upload, message):
    before = state()
    response = client_for(admin).post(URL, {**ticket_data(), "attachment": upload})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert state() == before


def test_an_attachment_is_kept_and_downloaded_by_the_organisation_only(
    client_for, admin, org, outsider
):
    screenshot = b"\x89PNG\r\n\x1a\n" + b"pixels"
    client_for(admin).post(
        URL, {**ticket_data(), "attachment": SimpleUploadedFile('../../"evil".png', screenshot)}
    )
    attachment = TicketAttachment.objects.get()
    assert attachment.filename == "_evil_.png"
    url = f"/o/acme/support/attachments/{attachment.public_id}/"
    response = client_for(admin).get(url)
    assert response.content == screenshot
    assert response["Content-Disposition"] == 'attachment; filename="_evil_.png"'
    assert client_for(outsider).get(url).status_code == 404
    assert (
        client_for(outsider)
        .get(f"/o/globex/support/attachments/{attachment.public_id}/")
        .status_code
        == 404
    )


def test_members_see_their_own_tickets_and_cannot_name_invoices(client_for, admin, member, org):
    issued_invoice(organisation=org, number="INV-2026-000101")
    client_for(admin).post(URL, ticket_data(subject="Admin's ticket"))
    page = client_for(member).get(URL).content.decode()
    assert "Admin&#x27;s ticket" not in page
    assert 'name="invoice_number"' not in page
    admins_ticket = SupportTicket.objects.get()
    assert client_for(member).get(f"{URL}{admins_ticket.public_id}/").status_code == 404
    response = client_for(member).post(URL, ticket_data(subject="Member's ticket"))
    assert response.status_code == 302
    assert "Member&#x27;s ticket" in client_for(member).get(URL).content.decode()
    # The admin sees both.
    admin_page = client_for(admin).get(URL).content.decode()
    assert "Admin&#x27;s ticket" in admin_page
    assert "Member&#x27;s ticket" in admin_page


def test_ops_reply_appears_in_the_portal_and_by_email_then_the_customer_answers(
    client_for, admin, org, committed
):
    client_for(admin).post(URL, ticket_data())
    ticket = SupportTicket.objects.get()
    ops = UserFactory(email="ops@portal.test", is_staff=True)
    mail.outbox.clear()
    with committed():
        ticket_reply_support(
            ticket=ticket,
            actor=Actor(user=ops),
            message="We refunded the duplicate.",
            close=False,
            now=timezone.now(),
        )
    ticket.refresh_from_db()
    assert ticket.status == "answered"
    assert ticket.assigned_to == ops
    assert "We refunded the duplicate." in mail.outbox[0].body
    assert mail.outbox[0].to == ["admin@acme.test"]
    url = f"{URL}{ticket.public_id}/"
    page = client_for(admin).get(url).content.decode()
    assert "We refunded the duplicate." in page
    assert "APPSeCONNECT support" in page
    assert client_for(admin).post(url, {"message": "Thanks!"}).status_code == 302
    ticket.refresh_from_db()
    assert ticket.status == "open"
    assert ticket.messages.count() == 3


def test_reply_to_a_closed_ticket_is_refused(client_for, admin, org):
    client_for(admin).post(URL, ticket_data())
    ticket = SupportTicket.objects.get()
    ticket_close(ticket=ticket, actor=Actor(user=None), now=timezone.now())
    before = state()
    url = f"{URL}{ticket.public_id}/"
    response = client_for(admin).post(url, {"message": "Hello?"})
    assert response.status_code == 400
    assert "is closed" in response.content.decode()
    assert state() == before
    ops = UserFactory(is_staff=True)
    from core.errors import ServiceError

    with pytest.raises(ServiceError):
        ticket_reply_support(
            ticket=ticket, actor=Actor(user=ops), message="Late", close=False, now=timezone.now()
        )
    assert state() == before


def test_support_stays_open_when_the_subscription_has_ended(client_for, admin, org):
    from tests.subscriptions.factories import SubscriptionFactory

    SubscriptionFactory(organisation=org, status="ended", ended_at=timezone.now())
    assert client_for(admin).post(URL, ticket_data()).status_code == 302
