"""Ops in Django admin: ticket work, the revised invoice copy, and staff permissions (money and
access actions ask for a reason, write the audit log, and need the right staff role)."""

import io

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from pypdf import PdfReader

from accounts.models import AuditEvent
from billing.documents import invoice_document_original
from billing.models import BillingProfile, Invoice, InvoiceDocument
from support.models import SupportTicket
from support.staff import ACCOUNT, BILLING, READ_ONLY
from tests.accounts.factories import UserFactory
from tests.billing.factories import billing_details, issued_invoice

pytestmark = pytest.mark.django_db


def pdf_text(pdf: bytes) -> str:
    return " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def staff(group=None, **fields):
    user = UserFactory(is_staff=True, **fields)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def ticket(client_for, admin, org):
    issued_invoice(
        organisation=org,
        number="INV-2026-000101",
        billing_details=billing_details(company_name="Acme Trading Ltd", city="Dublin"),
    )
    client_for(admin).post(
        "/o/acme/support/",
        {
            "category": "billing",
            "subject": "Please reissue with our new address",
            "message": "We moved to Cork.",
            "contact_email": "admin@acme.test",
            "invoice_number": "INV-2026-000101",
        },
    )
    return SupportTicket.objects.get()


def run_action(client, model_url, action, pks, **extra):
    return client.post(model_url, {"action": action, "_selected_action": pks, **extra})


def test_the_groups_exist_with_their_permissions():
    billing_staff = Group.objects.get(name=BILLING)
    assert billing_staff.permissions.filter(codename="record_payment").exists()
    assert billing_staff.permissions.filter(codename="view_invoice").exists()
    read_only = Group.objects.get(name=READ_ONLY)
    assert not read_only.permissions.exclude(codename__startswith="view_").exists()
    assert (
        Group.objects.get(name=ACCOUNT)
        .permissions.filter(codename="switch_off_enforcement")
        .exists()
    )


def test_revised_copy_keeps_the_original_and_shows_the_new_details(client_for, ticket, org):
    invoice = Invoice.objects.get(number="INV-2026-000101")
    original = bytes(invoice_document_original(invoice=invoice, now=invoice.issued_at).pdf)
    BillingProfile.objects.create(
        organisation=org,
        company_name="Acme Trading Cork Ltd",
        address_line1="5 Lapp's Quay",
        city="Cork",
        postal_code="T12 AB34",
        country="IE",
    )
    ops = staff(BILLING)
    client = client_for(ops)
    url = "/admin/support/supportticket/"
    # First the reason is asked; nothing happens yet.
    page = run_action(client, url, "issue_revised_copy", [ticket.pk])
    assert page.status_code == 200
    assert b"Reason" in page.content
    assert not InvoiceDocument.objects.filter(kind="revised").exists()
    run_action(
        client, url, "issue_revised_copy", [ticket.pk], apply="1", reason="Customer moved (T-1)"
    )
    revised = InvoiceDocument.objects.get(kind="revised")
    assert revised.created_by == ops
    assert bytes(InvoiceDocument.objects.get(kind="original").pdf) == original
    text = pdf_text(bytes(revised.pdf))
    assert "REVISED COPY" in text
    assert "Acme Trading Cork Ltd" in text
    assert "Cork" in text
    assert "Acme Trading Cork Ltd" not in pdf_text(original)
    event = AuditEvent.objects.get(action="billing.revised_copy_issued")
    assert event.changes["reason"]["new"] == "Customer moved (T-1)"
    # Both are downloadable by the customer; the original unchanged.
    customer = client_for(org.memberships.get(role="admin").user)
    listing = customer.get("/o/acme/settings/billing/invoices/").content.decode()
    assert f"/o/acme/settings/billing/invoices/INV-2026-000101/revised/{revised.pk}/pdf/" in listing
    assert (
        customer.get("/o/acme/settings/billing/invoices/INV-2026-000101/pdf/").content == original
    )
    assert customer.get(
        f"/o/acme/settings/billing/invoices/INV-2026-000101/revised/{revised.pk}/pdf/"
    ).content == bytes(revised.pdf)


def test_revised_copy_of_another_invoice_is_404(client_for, admin, org, other_org):
    mine = issued_invoice(organisation=org, number="INV-2026-000101")
    theirs = issued_invoice(organisation=other_org, number="INV-2026-000202")
    document = InvoiceDocument.objects.create(invoice=theirs, kind="revised", pdf=b"%PDF-x")
    client = client_for(admin)
    assert (
        client.get(
            f"/o/acme/settings/billing/invoices/{mine.number}/revised/{document.pk}/pdf/"
        ).status_code
        == 404
    )
    assert (
        client.get(
            f"/o/acme/settings/billing/invoices/{theirs.number}/revised/{document.pk}/pdf/"
        ).status_code
        == 404
    )


def test_read_only_staff_see_everything_but_run_no_money_action(client_for, ticket):
    invoice = Invoice.objects.get(number="INV-2026-000101")
    reader = client_for(staff(READ_ONLY))
    for url in (
        "/admin/",
        "/admin/support/supportticket/",
        f"/admin/support/supportticket/{ticket.pk}/change/",
        "/admin/billing/invoice/",
        "/admin/billing/dunningcase/",
    ):
        assert reader.get(url).status_code == 200, url
    listing = reader.get("/admin/billing/invoice/").content.decode()
    assert "record_payment" not in listing
    assert "issue_revised_copy" not in listing
    for action in ("record_payment", "mark_uncollectible", "issue_revised_copy"):
        run_action(reader, "/admin/billing/invoice/", action, [invoice.pk], apply="1", reason="try")
    run_action(reader, "/admin/support/supportticket/", "close", [ticket.pk])
    assert reader.get(f"/admin/support/supportticket/{ticket.pk}/reply/").status_code == 403
    invoice.refresh_from_db()
    ticket.refresh_from_db()
    assert invoice.status == "open"
    assert not InvoiceDocument.objects.filter(kind="revised").exists()
    assert ticket.status == "open"


def test_billing_staff_record_a_payment_with_a_reason(client_for, ticket):
    invoice = Invoice.objects.get(number="INV-2026-000101")
    client = client_for(staff(BILLING))
    page = run_action(client, "/admin/billing/invoice/", "record_payment", [invoice.pk])
    assert b"Reason" in page.content
    run_action(
        client, "/admin/billing/invoice/", "record_payment", [invoice.pk], apply="1", reason=""
    )
    invoice.refresh_from_db()
    assert invoice.status == "open"  # no reason, nothing done
    run_action(
        client,
        "/admin/billing/invoice/",
        "record_payment",
        [invoice.pk],
        apply="1",
        reason="Wire 7781",
    )
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    event = AuditEvent.objects.get(action="billing.payment_recorded")
    assert event.changes["reason"]["new"] == "Wire 7781"


def test_billing_staff_reply_and_close_from_admin(client_for, ticket, committed):
    client = client_for(staff(BILLING, email="bea@portal.test"))
    url = f"/admin/support/supportticket/{ticket.pk}/reply/"
    assert client.get(url).status_code == 200
    assert client.post(url, {"message": ""}).status_code == 400
    mail.outbox.clear()
    with committed():
        response = client.post(url, {"message": "Done: see the revised copy.", "close": "on"})
    assert response.status_code == 302
    ticket.refresh_from_db()
    assert ticket.status == "closed"
    assert "Done: see the revised copy." in mail.outbox[0].body
    # Replying to the closed ticket is refused with a message.
    again = client.post(url, {"message": "One more thing"})
    assert again.status_code == 400
    assert b"is closed" in again.content
    assert ticket.messages.count() == 2


def test_ticket_list_filters(client_for, ticket):
    client = client_for(staff(READ_ONLY))
    for query in (
        "?state=open_urgent",
        "?state=unassigned",
        "?status__exact=open",
        "?urgent__exact=1",
        f"?organisation__id__exact={ticket.organisation_id}",
    ):
        assert client.get(f"/admin/support/supportticket/{query}").status_code == 200, query
    assert (
        ticket.reference
        in client.get("/admin/support/supportticket/?state=unassigned").content.decode()
    )
    assert (
        ticket.reference
        not in client.get("/admin/support/supportticket/?state=open_urgent").content.decode()
    )


def test_access_actions_need_account_staff(client_for, admin, member, org):
    from django.utils import timezone

    from accounts.audit import Actor
    from retention.gdpr_review import deletion_request_create
    from retention.models import DataDeletionRequest
    from sso.models import SsoConfiguration

    deletion_request = deletion_request_create(
        organisation=org,
        actor=Actor(user=admin),
        scope="person",
        subject_user=member,
        reason="Left the company",
        now=timezone.now(),
    )
    config = SsoConfiguration.objects.create(organisation=org, enforced=True, backup_admin=admin)
    attempts = [
        ("/admin/retention/datadeletionrequest/", "approve", deletion_request.pk),
        ("/admin/sso/ssoconfiguration/", "switch_off_enforcement", config.pk),
    ]
    for group in (READ_ONLY, BILLING):
        client = client_for(staff(group))
        for url, action, pk in attempts:
            run_action(client, url, action, [pk], apply="1", reason="try")
    deletion_request.refresh_from_db()
    config.refresh_from_db()
    assert deletion_request.status == DataDeletionRequest.Status.PENDING
    assert config.enforced
    client = client_for(staff(ACCOUNT))
    run_action(
        client,
        "/admin/sso/ssoconfiguration/",
        "switch_off_enforcement",
        [config.pk],
        apply="1",
        reason="Locked out, ticket T-000042",
    )
    config.refresh_from_db()
    assert not config.enforced
