"""Article sections 2, 4 and 5 in a real browser: sign up, pick Professional monthly, enter the
card in the Stripe.js form (localstripe's mock), see the invoice, download its PDF."""

import io

import pytest
from django.core import mail
from playwright.sync_api import expect
from pypdf import PdfReader

from billing.models import Invoice
from tests.browser.helpers import link_in_mail

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def test_sign_up_choose_professional_pay_by_card_and_download_the_invoice(
    new_page, portal, localstripe
):
    page = new_page()
    page.goto(f"{portal}/accounts/signup/")
    page.get_by_label("Your name").fill("Paula Payer")
    page.get_by_label("Email").fill("paula@shop.test")
    page.get_by_label("Password").fill("a-long-fine-passphrase")
    page.get_by_label("Organisation name").fill("Shop Integrations")
    page.get_by_role("button", name="Sign Up").click()
    page.goto(link_in_mail(mail.outbox[-1], "/accounts/confirm-email/"))
    page.get_by_role("button", name="Confirm").click()

    # Settings > Subscription: no plan yet, so choose one.
    page.locator(".org-menu summary").click()
    page.locator(".org-menu").get_by_role("link", name="Settings").click()
    page.get_by_role("link", name="Choose a plan").first.click()
    page.get_by_text("Professional", exact=True).click()
    page.get_by_label("Billing cycle").select_option("monthly")
    page.get_by_label("Currency").select_option("USD")
    page.get_by_role("button", name="Continue to payment").click()
    expect(page.get_by_role("heading", name="Professional plan, monthly")).to_be_visible()

    # The card element of Stripe.js (localstripe's mock renders plain inputs).
    card = page.locator("#card-element")
    card.get_by_placeholder("number").fill("4242424242424242")
    card.get_by_placeholder("exp_month").fill("12")
    card.get_by_placeholder("exp_year").fill("30")
    card.get_by_placeholder("cvc").fill("123")
    card.get_by_placeholder("postal_code").fill("10001")
    page.get_by_role("button", name="Pay $982.77 and subscribe").click()
    expect(page.get_by_text("Welcome to the Professional plan.")).to_be_visible()

    invoice = Invoice.objects.get()
    assert (invoice.status, invoice.total) == ("paid", 98277)

    # Settings > Billing > Invoice History, click the invoice to download the PDF.
    page.get_by_role("navigation", name="Settings").get_by_role("link", name="Billing").click()
    expect(page.get_by_role("link", name=invoice.number)).to_be_visible()
    with page.expect_download() as download_info:
        page.get_by_role("link", name=invoice.number).click()
    download = download_info.value
    assert download.suggested_filename == f"{invoice.number}.pdf"
    with open(download.path(), "rb") as pdf:
        text = PdfReader(io.BytesIO(pdf.read())).pages[0].extract_text()
    assert invoice.number in text
    assert "Professional" in text
