"""Credit notes in Django admin ("Issue credit note" on invoices, the read-only CreditNote
admin) and in the customer's Invoice History."""

import io
import re
import threading
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from pypdf import PdfReader

from accounts.audit import Actor
from accounts.models import AuditEvent
from billing import gateway
from billing.credit_notes import credit_note_issue
from billing.invoicing import billing_run_issue
from billing.models import CreditNote, Invoice, Refund
from billing.templatetags.invoice_history import customer_outcome
from support.staff import BILLING, READ_ONLY
from tests.accounts.factories import UserFactory
from tests.billing.factories import issued_invoice, plan_line

pytestmark = pytest.mark.django_db

Outcome = CreditNote.Outcome
Reason = CreditNote.Reason

INVOICES = "/admin/billing/invoice/"
CREDIT_NOTES = "/admin/billing/creditnote/"
# Ops work a few days after the first invoice (START); credit-note numbers take this year.
NOW = datetime(2026, 2, 3, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _clock(time_machine):
    time_machine.move_to(NOW, tick=False)


@pytest.fixture
def reader(db):
    user = UserFactory(is_staff=True, email="sam@portal.test")
    user.groups.add(Group.objects.get(name=READ_ONLY))
    return user


@pytest.fixture
def bank_paid(org):
    """A paid bank-transfer invoice with two lines: €100.00 + €50.00, 23% VAT = €184.50."""
    return issued_invoice(
        organisation=org,
        number="INV-2026-000901",
        status=Invoice.Status.PAID,
        payment_method_kind="bank_transfer",
        lines=[
            plan_line(description="Professional plan", unit_amount=10_000),
            plan_line(description="Extra environment", unit_amount=5_000),
        ],
    )


def ask(client, invoice, **fields):
    """Run the action on `invoice`; with fields, submit its form as shown now."""
    data = {"action": "issue_credit_note", "_selected_action": [invoice.pk]}
    if fields:
        data = {**data, "apply": "1", **form_as_shown(invoice), **fields}
    return client.post(INVOICES, data, follow=True)


def form_as_shown(invoice) -> dict:
    """The page's hidden field: what the invoice had credited when it was shown."""
    return {"credited_before": Invoice.objects.get(pk=invoice.pk).amount_credited}


def request(**fields):
    return {"what": "amount", "reason": Reason.SERVICE_ISSUE, "outcome": Outcome.BALANCE, **fields}


def text(response) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", response.content.decode()).split())


def nothing_written(invoice):
    invoice.refresh_from_db()
    assert invoice.amount_credited == 0
    assert not CreditNote.objects.exists()
    assert not Refund.objects.exists()
    assert not AuditEvent.objects.filter(action="billing.credit_note_issued").exists()


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


# Who may ---------------------------------------------------------------------------------------


def test_read_only_staff_neither_see_nor_run_the_action(client_for, reader, paid):
    client = client_for(reader)
    listing = client.get(INVOICES).content.decode()
    assert paid.number in listing
    assert "issue_credit_note" not in listing
    change = client.get(f"{INVOICES}{paid.pk}/change/").content.decode()
    assert "/credit-note/" not in change
    ask(client, paid, **request(amount="100.00"))
    assert client.get(f"{INVOICES}{paid.pk}/credit-note/").status_code == 403
    url = f"{INVOICES}{paid.pk}/credit-note/"
    assert client.post(url, {**form_as_shown(paid), **request(amount="1")}).status_code == 403
    nothing_written(paid)


def test_billing_staff_see_the_action_and_the_button(client_for, ops, paid):
    client = client_for(ops)
    assert '<option value="issue_credit_note">' in client.get(INVOICES).content.decode()
    change = client.get(f"{INVOICES}{paid.pk}/change/").content.decode()
    assert f'href="{INVOICES}{paid.pk}/credit-note/">Issue credit note</a>' in change


def test_the_permission_is_the_billing_staffs():
    assert Group.objects.get(name=BILLING).permissions.filter(codename="issue_credit_note").exists()
    assert (
        not Group.objects.get(name=READ_ONLY)
        .permissions.filter(codename="issue_credit_note")
        .exists()
    )


def test_one_invoice_at_a_time(client_for, ops, paid, bank_paid):
    response = client_for(ops).post(
        INVOICES,
        {"action": "issue_credit_note", "_selected_action": [paid.pk, bank_paid.pk]},
        follow=True,
    )
    assert "Choose one invoice at a time" in text(response)
    assert not CreditNote.objects.exists()


# The page --------------------------------------------------------------------------------------


def test_the_page_shows_what_the_invoice_has_left(client_for, ops, paid):
    page = ask(client_for(ops), paid)
    assert page.status_code == 200
    body = text(page)
    assert f"Issue a credit note on {paid.number}" in body
    for figure in (
        "Total $982.77",
        "Already credited $0.00",
        "Left to credit $982.77",
        "Can still go back to the customer $982.77",
        "Amount due $0.00",
    ):
        assert figure in body
    assert "Professional plan, monthly subscription: $982.77 left ($799.00 + $183.77 tax)" in body
    for choice in (
        "The whole remaining amount",
        "Chosen lines",
        "An amount",
        "Refund to the card",
        "Credit to the customer balance",
        "Refunded outside (bank transfer or PO)",
        "Reduce the amount due",
        "Reduce the amount due — open invoices only.",
    ):
        assert choice in body
    assert "Refunded in Stripe" not in body  # recorded from Stripe, never chosen
    nothing_written(paid)


# Issuing ---------------------------------------------------------------------------------------


def test_an_amount_refunded_to_the_card(client_for, ops, paid, localstripe):
    response = ask(
        client_for(ops), paid, **request(amount="100.00", outcome=Outcome.REFUND, note="Outage")
    )

    credit_note = CreditNote.objects.get()
    refund = credit_note.refunds.get()
    assert (credit_note.number, credit_note.total) == ("CN-2026-000001", 10_000)
    assert (credit_note.status, refund.status) == (CreditNote.Status.ISSUED, "succeeded")
    assert (
        f"Credit note CN-2026-000001 issued for $100.00 on {paid.number} "
        f"(refunded to the card, Stripe refund {refund.processor_id})."
    ) in text(response)
    assert response.redirect_chain[-1][0] == INVOICES
    payment = paid.payments.get(status="succeeded")
    [at_stripe] = gateway.refunds_of(payment_intent_id=payment.processor_id)
    assert (at_stripe.refund_id, at_stripe.amount) == (refund.processor_id, 10_000)
    event = AuditEvent.objects.get(action="billing.credit_note_issued")
    assert (event.actor, event.organisation, event.target_label) == (
        ops,
        paid.organisation,
        paid.number,
    )
    assert event.changes["credit_note"]["new"] == "CN-2026-000001"
    assert event.changes["amount"]["new"] == "$100.00"
    assert event.changes["reason"]["new"] == "Service issue: Outage"
    assert event.ip_address == "127.0.0.1"


def test_a_refund_stripe_does_not_confirm_is_said_to_be_pending(client_for, ops, paid, monkeypatch):
    def down(**_):
        raise gateway.PaymentError("Stripe is not answering", code="api_connection_error")

    monkeypatch.setattr(gateway, "refund_create", down)
    response = ask(client_for(ops), paid, **request(amount="100", outcome=Outcome.REFUND))
    assert "CN-2026-000001 issued for $100.00" in text(response)
    assert "refund pending: Stripe has not confirmed it yet" in text(response)
    assert CreditNote.objects.get().status == CreditNote.Status.REFUND_PENDING


def test_a_form_sent_twice_issues_one_credit_note(client_for, ops, paid, localstripe):
    client = client_for(ops)
    shown = form_as_shown(paid)
    first = ask(client, paid, **shown, **request(amount="100.00", outcome=Outcome.REFUND))
    assert "CN-2026-000001 issued for $100.00" in text(first)
    again = ask(client, paid, **shown, **request(amount="100.00", outcome=Outcome.REFUND))

    assert again.status_code == 400
    assert (
        f"{paid.number} was credited since this page was shown ($100.00 credited now): "
        "nothing was issued."
    ) in text(again)
    assert "Already credited $100.00" in text(again)
    assert 'name="credited_before" value="10000"' in again.content.decode()
    assert CreditNote.objects.count() == 1
    payment = paid.payments.get(status="succeeded")
    assert len(gateway.refunds_of(payment_intent_id=payment.processor_id)) == 1
    paid.refresh_from_db()
    assert paid.amount_credited == 10_000


def test_a_form_without_what_the_page_showed_is_refused(client_for, ops, paid):
    url = f"{INVOICES}{paid.pk}/credit-note/"
    for shown in ({}, {"credited_before": "x"}):
        response = client_for(ops).post(url, {**shown, **request(amount="1")})
        assert response.status_code == 400
        assert "This page is out of date: open it again from the invoice." in text(response)
    nothing_written(paid)


@pytest.mark.django_db(transaction=True)
def test_two_submissions_at_once_issue_one_credit_note(ops, paid, localstripe):
    """A double click: both requests carry the same page; the second waits for the first."""
    barrier = threading.Barrier(2)
    outcomes = []
    data = {
        **form_as_shown(paid),
        **request(amount="100.00", outcome=Outcome.REFUND),
    }

    def submit():
        client = Client()
        client.force_login(ops)
        barrier.wait()
        try:
            response = client.post(f"{INVOICES}{paid.pk}/credit-note/", data)
            outcomes.append(response.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [302, 400]
    assert CreditNote.objects.count() == 1
    payment = paid.payments.get(status="succeeded")
    assert len(gateway.refunds_of(payment_intent_id=payment.processor_id)) == 1


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "Enter the amount to credit."),
        ("abc", "Enter the amount in USD as digits with a decimal point, e.g. 100.00"),
        ("1e3", "Enter the amount in USD as digits with a decimal point"),
        ("1,000.00", "Enter the amount in USD as digits with a decimal point"),
        ("$100", "Enter the amount in USD as digits with a decimal point"),
        ("100.001", "Use at most 2 decimals (cents), e.g. 100.00 for $100.00."),
        ("-5", "The amount must be more than zero."),
        ("-0.01", "The amount must be more than zero."),
        ("0.00", "The amount must be more than zero."),
        ("12345678901234", "Enter the amount in USD as digits with a decimal point"),
    ],
)
def test_a_bad_amount_is_a_form_error_and_writes_nothing(client_for, ops, paid, typed, message):
    response = ask(client_for(ops), paid, **request(amount=typed))
    assert response.status_code == 400
    assert message in text(response)
    assert "Nothing was issued." in text(response)
    nothing_written(paid)


def test_an_amount_with_cents_is_converted_exactly(client_for, ops, paid):
    ask(client_for(ops), paid, **request(amount=" 0.29 "))
    assert CreditNote.objects.get().total == 29


def test_more_than_is_left_is_refused_with_the_services_words(client_for, ops, paid):
    response = ask(client_for(ops), paid, **request(amount="982.78"))
    assert response.status_code == 400
    assert (
        "Only $982.77 is left to credit on this invoice; $982.78 is more. Nothing was issued."
    ) in text(response)
    nothing_written(paid)
    # The form keeps what was typed.
    assert 'value="982.78"' in response.content.decode()


def test_chosen_lines(client_for, ops, bank_paid):
    extra = bank_paid.lines.get(description="Extra environment")
    client = client_for(ops)
    response = ask(
        client,
        bank_paid,
        **request(
            what="lines", lines=[extra.pk], outcome=Outcome.REFUNDED_OUTSIDE, reference="BT-88"
        ),
    )

    credit_note = CreditNote.objects.get()
    assert [
        (line.invoice_line, line.amount, line.tax_amount) for line in credit_note.lines.all()
    ] == [(extra, 5_000, 1_150)]
    assert f"issued for €61.50 on {bank_paid.number} (refunded outside, reference BT-88)" in (
        text(response)
    )
    page = text(ask(client, bank_paid))
    assert "Extra environment: credited in full." in page
    assert "Professional plan: €123.00 left (€100.00 + €23.00 tax)" in page
    assert "Left to credit €123.00" in page


def test_no_line_chosen_is_a_form_error(client_for, ops, bank_paid):
    response = ask(
        client_for(ops),
        bank_paid,
        **request(what="lines", outcome=Outcome.REFUNDED_OUTSIDE, reference="BT-88"),
    )
    assert response.status_code == 400
    assert "Choose at least one line to credit." in text(response)
    assert not CreditNote.objects.exists()


def test_the_whole_invoice_then_nothing_more(client_for, ops, bank_paid):
    client = client_for(ops)
    ask(client, bank_paid, **request(what="whole", amount="5", outcome=Outcome.BALANCE))

    credit_note = CreditNote.objects.get()
    assert credit_note.total == bank_paid.total == 18_450
    page = ask(client, bank_paid)
    assert "Left to credit €0.00" in text(page)
    assert "Every line is credited in full already." in text(page)
    again = ask(client, bank_paid, **request(what="whole", outcome=Outcome.BALANCE))
    assert again.status_code == 400
    assert f"Invoice {bank_paid.number} is credited in full already: nothing was issued." in (
        text(again)
    )
    assert CreditNote.objects.count() == 1


def test_a_refund_to_the_card_of_a_bank_transfer_invoice_points_to_refunded_outside(
    client_for, ops, bank_paid
):
    response = ask(client_for(ops), bank_paid, **request(amount="10", outcome=Outcome.REFUND))
    assert response.status_code == 400
    assert (
        f"Invoice {bank_paid.number} was not paid by card through Stripe, so there is no charge "
        'to refund. Choose "Refunded outside" and give the bank transfer or PO refund\'s reference.'
    ) in text(response).replace("&quot;", '"').replace("&#x27;", "'")
    assert not CreditNote.objects.exists()


def test_other_needs_a_note_and_refunded_outside_a_reference(client_for, ops, bank_paid):
    client = client_for(ops)
    response = ask(client, bank_paid, **request(amount="10", reason=Reason.OTHER))
    assert response.status_code == 400
    assert "Say what the reason is when it is" in text(response)
    response = ask(client, bank_paid, **request(amount="10", outcome=Outcome.REFUNDED_OUTSIDE))
    assert "Give the reference of the bank transfer or PO refund." in text(response)
    response = ask(client, bank_paid, **request(amount="10", reason="refunded_in_stripe"))
    assert "Select a valid choice." in text(response)
    assert not CreditNote.objects.exists()


def test_reduce_the_amount_due_of_an_open_invoice_from_its_page(client_for, ops, org):
    invoice = issued_invoice(
        organisation=org, number="INV-2026-000902", payment_method_kind="bank_transfer"
    )
    url = f"{INVOICES}{invoice.pk}/credit-note/"
    client = client_for(ops)
    assert "Amount due €613.77" in text(client.get(url))
    response = client.post(
        url, {**form_as_shown(invoice), **request(amount="100.00", outcome=Outcome.REDUCE_DUE)}
    )
    assert response.status_code == 302
    assert response["Location"] == f"{INVOICES}{invoice.pk}/change/"
    change = text(client.get(response["Location"]))
    assert (
        f"issued for €100.00 on {invoice.number} (taken off the amount due; €513.77 still due)"
        in (change)
    )
    assert "CN-2026-000001" in change  # the credit-notes inline
    invoice.refresh_from_db()
    assert (invoice.amount_due, invoice.status) == (51_377, Invoice.Status.OPEN)


def test_a_refused_submit_from_the_invoice_page_changes_nothing(client_for, ops, paid):
    response = client_for(ops).post(
        f"{INVOICES}{paid.pk}/credit-note/",
        {**form_as_shown(paid), **request(amount="10", outcome=Outcome.REDUCE_DUE)},
    )
    assert response.status_code == 400
    assert '"Reduce the amount due" is for open invoices' in text(response).replace("&quot;", '"')
    nothing_written(paid)


# The CreditNote admin --------------------------------------------------------------------------


@pytest.fixture
def credited(paid, ops):
    return credit_note_issue(
        invoice=paid,
        actor=Actor(user=ops),
        reason=Reason.GOODWILL,
        outcome=Outcome.REFUND,
        amount=2_500,
        now=NOW,
    )


def test_credit_notes_are_listed_filtered_and_read_only(client_for, ops, credited, paid):
    client = client_for(ops)
    listing = text(client.get(CREDIT_NOTES))
    assert (
        f"CN-2026-000001 {paid.number} Acme Trading $25.00 Refund to the card Issued Goodwill"
        in (listing)
    )
    assert "Refund pending" in listing  # a choice of the status filter
    assert "CN-2026-000001" not in text(client.get(f"{CREDIT_NOTES}?status__exact=refund_pending"))
    page = client.get(f"{CREDIT_NOTES}{credited.pk}/change/")
    body = text(page)
    assert "Professional plan" in body  # its lines
    assert credited.refunds.get().processor_id in body  # its refunds
    assert f'href="{CREDIT_NOTES}{credited.pk}/pdf/"' in page.content.decode()
    assert client.post(f"{CREDIT_NOTES}{credited.pk}/change/", {"note": "x"}).status_code == 403


def test_staff_download_the_pdf_from_admin(client_for, ops, reader, credited, paid):
    for user in (ops, reader):
        response = client_for(user).get(f"{CREDIT_NOTES}{credited.pk}/pdf/")
        assert response.status_code == 200
        assert response["Content-Disposition"] == 'attachment; filename="CN-2026-000001.pdf"'
        assert "CN-2026-000001" in pdf_text(response.content)
        assert paid.number in pdf_text(response.content)
    assert client_for(ops).post(f"{CREDIT_NOTES}{credited.pk}/pdf/").status_code == 405


def test_staff_without_the_view_permission_and_customers_get_no_pdf(
    client_for, credited, admin, client
):
    url = f"{CREDIT_NOTES}{credited.pk}/pdf/"
    assert client_for(UserFactory(is_staff=True)).get(url).status_code == 403
    client.logout()
    response = client_for(admin).get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


# Invoice History -------------------------------------------------------------------------------


def history(client, org):
    return client.get(reverse("billing:invoices", args=[org.slug]))


def credit_note_rows(response) -> list[str]:
    body = response.content.decode().split("<tbody>")[1]
    return [
        " ".join(re.sub(r"<[^>]+>", " ", row).split())
        for row in re.findall(r'<tr class="credit-note-row"[^>]*>(.*?)</tr>', body, re.S)
    ]


def test_credit_notes_are_listed_under_their_invoice(client_for, paid, ops, org, billing_user):
    issue = {"invoice": paid, "actor": Actor(user=ops), "reason": Reason.GOODWILL, "now": NOW}
    credit_note_issue(**issue, outcome=Outcome.REFUND, amount=10_000)
    credit_note_issue(**issue, outcome=Outcome.BALANCE, amount=2_500)
    page = history(client_for(billing_user), org)

    body = page.content.decode()
    assert credit_note_rows(page) == [
        f"Credit note CN-2026-000001 (PDF) On invoice {paid.number} 3 Feb 2026 −$100.00 "
        "Refunded to card",
        f"Credit note CN-2026-000002 (PDF) On invoice {paid.number} 3 Feb 2026 −$25.00 "
        "Added to balance",
    ]
    assert "credited $125.00" in text(page)
    assert "credit applied" not in text(page)
    # Each listed right after its invoice's row, and each a PDF link.
    assert body.index(paid.number) < body.index("CN-2026-000001") < body.index("CN-2026-000002")
    href = reverse("billing:credit_note_pdf", args=[org.slug, "CN-2026-000001"])
    assert f'<a href="{href}" download>Credit note <span class="nowrap">CN-2026-000001' in body
    response = client_for(billing_user).get(href)
    assert response.status_code == 200
    assert "CN-2026-000001" in pdf_text(response.content)


def test_a_pending_refund_and_every_outcome_in_the_customers_words(
    client_for, paid, ops, org, admin, monkeypatch
):
    def down(**_):
        raise gateway.PaymentError("Stripe is not answering", code="api_connection_error")

    monkeypatch.setattr(gateway, "refund_create", down)
    credit_note_issue(
        invoice=paid,
        actor=Actor(user=ops),
        reason=Reason.DUPLICATE,
        outcome=Outcome.REFUND,
        amount=1_000,
        now=NOW,
    )
    [row] = credit_note_rows(history(client_for(admin), org))
    assert row.endswith("−$10.00 Refund pending")
    assert 'badge badge--warn">Refund pending' in history(client_for(admin), org).content.decode()

    words = {
        (outcome, status): customer_outcome(CreditNote(outcome=outcome, status=status))[0]
        for outcome, status in [
            (Outcome.REFUND, "issued"),
            (Outcome.REFUND, "refund_pending"),
            (Outcome.BALANCE, "issued"),
            (Outcome.REFUNDED_OUTSIDE, "issued"),
            (Outcome.REDUCE_DUE, "issued"),
            (Outcome.REFUNDED_IN_STRIPE, "issued"),
        ]
    }
    assert list(words.values()) == [
        "Refunded to card",
        "Refund pending",
        "Added to balance",
        "Refunded by bank transfer",
        "Deducted from amount due",
        "Refunded to card",
    ]


def test_credit_applied_shows_on_the_invoice_row(client_for, paid, org, admin):
    # The customer balance paid part of it (billing.balance applies it when an invoice is
    # issued); set directly here, the row only reads the figure.
    Invoice.objects.filter(pk=paid.pk).update(credit_applied=5_000)
    page = history(client_for(admin), org)
    assert "credit applied $50.00" in text(page)
    assert "credited" not in text(page).replace("credit applied", "")
    assert credit_note_rows(page) == []


def test_the_page_costs_the_same_queries_with_many_invoices_and_credit_notes(
    client_for, paid, ops, org, admin, django_assert_num_queries
):
    issue = {"actor": Actor(user=ops), "reason": Reason.GOODWILL, "now": NOW}
    credit_note_issue(invoice=paid, **issue, outcome=Outcome.BALANCE, amount=100)
    client = client_for(admin)
    history(client, org)
    with CaptureQueriesContext(connection) as one:
        assert history(client, org).status_code == 200
    billing_run_issue(now=datetime(2026, 6, 1, tzinfo=UTC))  # 4 renewals, open
    renewals = Invoice.objects.filter(organisation=org).exclude(pk=paid.pk)
    assert renewals.count() == 4
    credit_note_issue(invoice=paid, **issue, outcome=Outcome.BALANCE, amount=200)
    for invoice in renewals:
        for amount in (1_000, 2_000):
            credit_note_issue(invoice=invoice, **issue, outcome=Outcome.REDUCE_DUE, amount=amount)
    with django_assert_num_queries(len(one.captured_queries)):
        page = history(client, org)
    assert len(credit_note_rows(page)) == 10


def test_members_see_no_invoices_nor_credit_notes(client_for, credited, org, member):
    client = client_for(member)
    assert history(client, org).status_code == 403
    pdf = reverse("billing:credit_note_pdf", args=[org.slug, credited.number])
    assert client.get(pdf).status_code == 403


def test_another_organisations_credit_note_is_not_found(
    client_for, credited, org, other_org, outsider
):
    client = client_for(outsider)
    # Organisation A's credit note, under A's slug (not a member) and under B's own.
    for slug in (org.slug, other_org.slug):
        pdf = reverse("billing:credit_note_pdf", args=[slug, credited.number])
        assert client.get(pdf).status_code == 404
    assert "CN-2026" not in history(client, other_org).content.decode()
