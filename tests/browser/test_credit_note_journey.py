"""Credit notes in a real browser: ops credit $100.00 of a paid invoice back to the card from
Django admin; the organisation's Billing contact sees it in Invoice History and downloads the
credit note's PDF, on a desktop and on a phone."""

import io
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect
from pypdf import PdfReader

from billing import gateway
from billing.models import CreditNote, Payment
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.helpers import subscribe
from tests.browser.helpers import assert_fits_screen, billing_staff

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def paid(localstripe):
    """Acme Trading on Professional monthly since 3 days ago; its first invoice ($982.77)
    paid by card. Its Billing contact, and Bea of Billing staff."""
    org = OrganisationFactory(name="Acme Trading", slug="acme")
    MembershipFactory(organisation=org, user=UserFactory(email="bill@acme.test"), role="billing")
    invoice = subscribe(org, now=timezone.now() - timedelta(days=3))
    assert invoice.status == "paid"
    billing_staff("bea@portal.test")
    return invoice


def sign_in(page, url, email):
    page.goto(url)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)


def test_ops_refund_100_and_the_billing_contact_downloads_the_credit_note(new_page, portal, paid):
    # Ops: Django admin > Invoices, the paid invoice, "Issue credit note".
    ops = new_page()
    sign_in(ops, f"{portal}/admin/login/?next=/admin/billing/invoice/", "bea@portal.test")
    ops.get_by_role("button", name="Log in").click()
    ops.get_by_role("textbox", name="Search").fill(paid.number)
    ops.get_by_role("button", name="Search").click()
    ops.get_by_role("link", name=paid.number).click()
    expect(ops.get_by_role("heading", name=paid.number)).to_be_visible()
    ops.go_back()
    ops.get_by_role("checkbox", name=f"Select this object for an action - {paid.number}").check()
    ops.get_by_role("combobox", name="Action").select_option(
        label="Issue credit note (refund, balance or reduce the amount due)"
    )
    ops.get_by_role("button", name="Go", exact=True).click()

    expect(ops.get_by_role("heading", name=f"Issue a credit note on {paid.number}")).to_be_visible()
    figures = ops.get_by_role("table", name="What the invoice has left")
    expect(figures.get_by_role("row", name="Left to credit")).to_contain_text("$982.77")
    expect(figures.get_by_role("row", name="Can still go back")).to_contain_text("$982.77")
    ops.get_by_role("radio", name="An amount").check()
    ops.get_by_label("Amount (USD)").fill("100.00")
    ops.get_by_label("Reason").select_option(label="Service issue")
    ops.get_by_role("radio", name="Refund to the card").check()
    ops.get_by_role("button", name="Issue credit note").click()

    credit_note = CreditNote.objects.get()
    refund = credit_note.refunds.get()
    expect(ops.locator(".messagelist")).to_contain_text(
        f"Credit note {credit_note.number} issued for $100.00 on {paid.number} "
        f"(refunded to the card, Stripe refund {refund.processor_id})."
    )
    # Stripe has the refund, made with our key.
    payment = Payment.objects.get(invoice=paid, status="succeeded")
    [at_stripe] = gateway.refunds_of(payment_intent_id=payment.processor_id)
    assert (at_stripe.refund_id, at_stripe.amount) == (refund.processor_id, 10_000)
    assert at_stripe.metadata["credit_note"] == credit_note.number
    # The invoice's page lists it.
    ops.get_by_role("link", name=paid.number).first.click()
    expect(ops.locator(".inline-group").filter(has_text="Credit notes")).to_contain_text(
        credit_note.number
    )

    # The Billing contact: Settings > Billing > Invoice History.
    customer = new_page()
    sign_in(customer, f"{portal}/accounts/login/", "bill@acme.test")
    customer.get_by_role("button", name="Sign In").click()
    customer.goto(f"{portal}/o/acme/settings/billing/")
    invoice_row = customer.get_by_role("row").filter(
        has=customer.get_by_role("link", name=f"{paid.number} (PDF)")
    )
    expect(invoice_row).to_contain_text("credited $100.00")
    credit_row = customer.locator(f"tr[data-credit-note='{credit_note.number}']")
    expect(credit_row).to_contain_text("−$100.00")
    expect(credit_row).to_contain_text("Refunded to card")
    with customer.expect_download() as download_info:
        credit_row.get_by_role("link", name=f"Credit note {credit_note.number}").click()
    download = download_info.value
    assert download.suggested_filename == f"{credit_note.number}.pdf"
    with open(download.path(), "rb") as pdf:
        text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.read())).pages)
    assert credit_note.number in text
    assert paid.number in text
    assert "$100.00" in text

    # On a phone the rows stack: the amounts and the status stay on screen, no sideways scroll.
    phone = new_page(width=375, height=800)
    sign_in(phone, f"{portal}/accounts/login/", "bill@acme.test")
    phone.get_by_role("button", name="Sign In").click()
    phone.goto(f"{portal}/o/acme/settings/billing/")
    credit_row = phone.locator(f"tr[data-credit-note='{credit_note.number}']")
    for shown in (
        phone.get_by_text("credited $100.00"),
        phone.get_by_role("table").get_by_text("Paid", exact=True),
        credit_row.get_by_text("−$100.00"),
        credit_row.get_by_text("Refunded to card"),
    ):
        expect(shown).to_be_visible()
        box = shown.bounding_box()
        assert box is not None
        assert box["x"] >= 0, box
        assert box["x"] + box["width"] <= 375, box
    assert_fits_screen(phone)
    assert re.search(r"\$982\.77", phone.locator("table").inner_text())
