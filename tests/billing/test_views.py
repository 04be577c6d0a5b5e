import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from pypdf import PdfReader

from accounts.models import AuditEvent
from billing.invoicing import billing_run_issue
from billing.models import BillingProfile, Invoice, InvoiceDocument, PaymentMethod
from devkit.stripe_standin import MASTERCARD, confirm_card_setup
from subscriptions.models import Subscription
from tests.billing.helpers import add_card, subscribe

pytestmark = pytest.mark.django_db


def url(name, org, *args):
    return reverse(f"billing:{name}", args=[org.slug, *args])


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def client_secret_in(response) -> str:
    match = re.search(r'data-client-secret="([^"]+)"', response.content.decode())
    assert match, "no card form on the page"
    return match.group(1)


def test_invoice_history_lists_invoices_newest_first_and_paginates(
    client_for, subscribed, org, admin
):
    billing_run_issue(now=datetime(2028, 1, 1, tzinfo=UTC))  # 23 more monthly invoices
    client = client_for(admin)
    first_page = client.get(url("invoices", org)).content.decode()
    numbers = re.findall(r"INV-\d{4}-\d{6}(?=<span)", first_page)
    assert len(numbers) == 20
    newest = Invoice.objects.order_by("-issued_at", "-id").first().number
    assert numbers[0] == newest
    # Pages by keyset (core.keyset): the Older link carries the last row's position.
    older = re.search(r'href="\?before=([\w-]+)" rel="next">Older', first_page).group(1)
    second_page = client.get(url("invoices", org), {"before": older}).content.decode()
    assert re.findall(r"INV-\d{4}-\d{6}(?=<span)", second_page)[-1] == "INV-2026-000001"
    assert 'rel="next"' not in second_page
    assert 'rel="prev">← Newer</a>' in second_page


def test_invoice_history_rows_show_dates_in_the_organisation_zone(
    client_for, localstripe, org, admin
):
    org.time_zone = "Pacific/Kiritimati"  # UTC+14: 10:00 UTC is midnight there, a day later
    org.save(update_fields=["time_zone"])
    paid = subscribe(org, currency="EUR")  # 31 Jan 2026 10:00 UTC
    InvoiceDocument.objects.create(
        invoice=paid,
        kind=InvoiceDocument.Kind.REVISED,
        pdf=b"%PDF-1.7",
        created_at=datetime(2026, 2, 15, 12, tzinfo=UTC),
    )
    billing_run_issue(now=datetime(2026, 3, 1, tzinfo=UTC))
    body = client_for(admin).get(url("invoices", org)).content.decode()
    rows = [
        " ".join(re.sub(r"<[^>]+>", " ", row).split())
        for row in re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>")[1], re.S)
    ]
    assert rows == [
        "INV-2026-000002 (PDF) Professional · Subscription period "
        "1 Mar 2026 1 Mar 2026 – 1 Apr 2026 €921.27 Open · €921.27 due 1 Mar",
        "INV-2026-000001 (PDF) Professional · Subscription period "
        "Revised copy, 16 Feb 2026 of INV-2026-000001 (PDF) "
        "1 Feb 2026 1 Feb 2026 – 1 Mar 2026 €921.27 Paid",
    ]
    revised = InvoiceDocument.objects.get(kind=InvoiceDocument.Kind.REVISED)
    for href in (
        url("invoice_pdf", org, "INV-2026-000002"),
        url("invoice_pdf", org, "INV-2026-000001"),
        url("invoice_revised_pdf", org, "INV-2026-000001", revised.pk),
    ):
        assert f'<a href="{href}" download>' in body


def test_invoice_history_query_count_is_constant(client_for, subscribed, org, admin):
    client = client_for(admin)
    client.get(url("invoices", org))
    with CaptureQueriesContext(connection) as few:
        client.get(url("invoices", org))
    expected = len(few.captured_queries)
    billing_run_issue(now=datetime(2026, 9, 1, tzinfo=UTC))
    with CaptureQueriesContext(connection) as many:
        client.get(url("invoices", org))
    assert len(many.captured_queries) == expected


def test_clicking_an_invoice_downloads_its_pdf(client_for, subscribed, org, admin, billing_user):
    for user in (admin, billing_user):
        response = client_for(user).get(url("invoice_pdf", org, subscribed.number))
        assert response.status_code == 200
        assert response["Content-Type"] == "application/pdf"
        assert response["Content-Disposition"] == f'attachment; filename="{subscribed.number}.pdf"'
        text = pdf_text(response.content)
        assert subscribed.number in text
        assert "Professional" in text
        assert "$982.77" in text


def test_members_and_other_organisations_cannot_download(
    client_for, subscribed, org, member, outsider, other_org
):
    assert client_for(member).get(url("invoice_pdf", org, subscribed.number)).status_code == 403
    client = client_for(outsider)
    assert client.get(url("invoice_pdf", org, subscribed.number)).status_code == 404
    assert client.get(url("invoice_pdf", other_org, subscribed.number)).status_code == 404


def test_billing_details_changed_later_do_not_change_a_past_pdf(client_for, subscribed, org, admin):
    client = client_for(admin)
    before = client.get(url("invoice_pdf", org, subscribed.number)).content
    response = client.post(
        url("billing_information", org),
        {
            "company_name": "Acme Renamed GmbH",
            "address_line1": "Hauptstrasse 1",
            "city": "Berlin",
            "postal_code": "10115",
            "country": "DE",
            "vat_number": "136695976",
        },
    )
    assert response.status_code == 302
    profile = BillingProfile.objects.get(organisation=org)
    assert (profile.company_name, profile.vat_number) == ("Acme Renamed GmbH", "DE136695976")
    assert AuditEvent.objects.filter(action="billing.details_updated").exists()
    after = client.get(url("invoice_pdf", org, subscribed.number)).content
    assert after == before
    assert "Acme Renamed GmbH" not in pdf_text(after)
    billing_run_issue(now=datetime(2026, 2, 28, 10, 0, tzinfo=UTC))
    renewal = Invoice.objects.order_by("-pk").first()
    assert "Acme Renamed GmbH" in pdf_text(
        client.get(url("invoice_pdf", org, renewal.number)).content
    )


@pytest.mark.parametrize(
    ("change", "field_error"),
    [
        ({"vat_number": "DE136695977"}, "This is not a valid VAT/GST number for DE."),
        (
            {"vat_number": "FR40303265045"},
            "This VAT number is not a DE number (it starts with FR).",
        ),
        ({"country": "XX"}, "Select a valid choice. XX is not one of the available choices."),
        ({"po_number": "PO-7788"}, "your plan does not allow a PO number"),
        ({"company_name": ""}, "This field is required."),
    ],
)
def test_bad_billing_information_is_refused(
    client_for, subscribed, org, admin, change, field_error
):
    data = {"company_name": "Acme", "country": "DE", **change}
    response = client_for(admin).post(url("billing_information", org), data)
    assert response.status_code == 400
    assert field_error in response.content.decode()
    assert not BillingProfile.objects.filter(organisation=org).exclude(company_name="").exists()


def test_po_number_is_accepted_on_enterprise(client_for, subscribed, org, admin):
    from subscriptions.models import Plan

    Subscription.objects.filter(organisation=org).update(plan=Plan.objects.get(code="enterprise"))
    response = client_for(admin).post(
        url("billing_information", org),
        {"company_name": "Acme", "country": "US", "po_number": "PO-7788"},
    )
    assert response.status_code == 302
    assert BillingProfile.objects.get(organisation=org).po_number == "PO-7788"


def test_update_card_replaces_the_card_charged_next(client_for, subscribed, org, billing_user):
    client = client_for(billing_user)
    page = client.get(url("payment_method", org))
    assert "Visa ending 4242" in page.content.decode()
    setup_intent_id = confirm_card_setup(client_secret_in(page), number=MASTERCARD)
    response = client.post(
        url("payment_method", org), {"setup_intent_id": setup_intent_id}, follow=True
    )
    assert "Mastercard •••• 4444 saved. It will be charged from the next billing date." in (
        response.content.decode()
    )
    assert list(PaymentMethod.objects.values_list("last4", "status").order_by("pk")) == [
        ("4242", "replaced"),
        ("4444", "active"),
    ]


def test_unconfirmed_card_is_refused(client_for, subscribed, org, admin):
    response = client_for(admin).post(url("payment_method", org), {"setup_intent_id": "nonsense"})
    assert response.status_code == 400
    assert "The card was not confirmed. Please enter it again." in response.content.decode()
    assert PaymentMethod.objects.count() == 1


def test_expiring_card_shows_a_banner(client_for, localstripe, org, admin):
    card = add_card(org)
    PaymentMethod.objects.filter(pk=card.pk).update(
        expires_at=datetime.now(UTC) + timedelta(days=10)
    )
    page = client_for(admin).get(url("payment_method", org)).content.decode()
    assert f"expires at the end of 12/{card.exp_year}. Update it before then" in page


def test_choose_plan_then_pay_by_card(client_for, localstripe, org, admin):
    client = client_for(admin)
    page = client.get(url("choose_plan", org)).content.decode()
    for name in ("Standard", "Professional", "Enterprise"):
        assert name in page
    response = client.get(
        url("choose_plan", org),
        {"plan": "professional", "billing_cycle": "monthly", "currency": "EUR"},
    )
    assert response.status_code == 302
    checkout = client.get(response["Location"])
    assert "€749.00" in checkout.content.decode()
    setup_intent_id = confirm_card_setup(client_secret_in(checkout))
    done = client.post(
        url("checkout", org),
        {
            "plan": "professional",
            "billing_cycle": "monthly",
            "currency": "EUR",
            "setup_intent_id": setup_intent_id,
        },
    )
    assert done.status_code == 302
    assert done["Location"] == reverse("subscriptions:settings", args=[org.slug])
    subscription = Subscription.objects.get(organisation=org)
    assert (subscription.status, subscription.currency) == ("active", "EUR")
    assert Invoice.objects.get().status == "paid"


def test_tampered_plan_is_refused(client_for, localstripe, org, admin):
    response = client_for(admin).post(
        url("checkout", org), {"plan": "platinum", "billing_cycle": "monthly", "currency": "USD"}
    )
    assert response.status_code == 400
    assert "Select a valid choice. platinum is not one of the available choices." in (
        response.content.decode()
    )
    assert Subscription.objects.count() == 0
    assert Invoice.objects.count() == 0


def test_billing_contact_cannot_choose_the_plan(client_for, org, billing_user):
    assert client_for(billing_user).get(url("choose_plan", org)).status_code == 403


def test_dashboard_asks_a_new_admin_to_choose_a_plan(client_for, localstripe, org, admin, member):
    dashboard = reverse("portal:overview", args=[org.slug])
    assert "Next step: choose a plan." in client_for(admin).get(dashboard).content.decode()
    assert "Next step: choose a plan." not in client_for(member).get(dashboard).content.decode()
    from tests.billing.helpers import subscribe

    subscribe(org)
    assert "Next step: choose a plan." not in client_for(admin).get(dashboard).content.decode()
