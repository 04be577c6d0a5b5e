"""The finance export (Ops dashboard > Finance export): every invoice and credit note of a month
or a quarter as CSV, exactly; its totals equal the dashboard's; bad periods refused with nothing
streamed; Billing staff only; one query whatever the number of rows."""

import csv
import io
from datetime import UTC, datetime

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.finance_export import COLUMNS
from billing.models import CreditNote, Invoice, Payment, Refund
from portal import ops_figures
from support import staff
from tests.accounts.factories import OrganisationFactory, UserFactory
from tests.billing.factories import billing_details, issued_invoice, plan_line

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
URL = "/admin/finance-export/"


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=False):
        yield


def staff_user(group):
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def billing_staff(db):
    return staff_user(staff.BILLING)


def credit_note(invoice, *, net, tax, on, number, outcome="balance", status="issued"):
    return CreditNote.objects.create(
        organisation=invoice.organisation,
        invoice=invoice,
        number=number,
        reason="goodwill",
        outcome=outcome,
        status=status,
        currency=invoice.currency,
        subtotal=net,
        tax_amount=tax,
        total=net + tax,
        issued_at=on,
    )


@pytest.fixture
def october():
    """October 2026: an Irish invoice (23% VAT) paid, credited 20.00 + 4.60 and refunded to the
    card; a German business invoice under reverse charge whose company name starts with "=";
    a void invoice; a USD invoice credited by bank transfer. Around it, invoices of September
    and November that must not appear."""
    acme = OrganisationFactory(name="Acme Org")
    ie = issued_invoice(
        organisation=acme,
        number="INV-2026-000101",
        status="paid",
        issued_at=datetime(2026, 10, 1, 0, 5, tzinfo=UTC),
        lines=[plan_line(unit_amount=10_000)],
    )
    payment = Payment.objects.create(
        organisation=acme,
        invoice=ie,
        method_kind="card",
        attempt=1,
        amount=ie.total,
        currency="EUR",
        status="succeeded",
        idempotency_key="pay-101",
        created_at=ie.issued_at,
        completed_at=ie.issued_at,
    )
    ie_note = credit_note(
        ie,
        net=2_000,
        tax=460,
        on=datetime(2026, 10, 12, 9, tzinfo=UTC),
        number="CN-2026-000007",
        outcome="refund",
    )
    Invoice.objects.filter(pk=ie.pk).update(amount_credited=2_460)
    Refund.objects.create(
        organisation=acme,
        credit_note=ie_note,
        payment=payment,
        payment_intent_id="pi_1",
        amount=2_460,
        currency="EUR",
        status="succeeded",
        idempotency_key="refund-7",
        created_at=ie_note.issued_at,
    )
    de = issued_invoice(
        organisation=OrganisationFactory(name="Formula GmbH"),
        number="INV-2026-000102",
        tax_rule="reverse_charge",
        tax_rate_bp=0,
        issued_at=datetime(2026, 10, 31, 23, 59, tzinfo=UTC),
        lines=[plan_line(unit_amount=49_900)],
        details=billing_details(
            company_name='=HYPERLINK("http://x.test")', country="DE", vat_number="+DE123"
        ),
    )
    issued_invoice(
        number="INV-2026-000103",
        status="void",
        issued_at=datetime(2026, 10, 15, tzinfo=UTC),
        lines=[plan_line(unit_amount=7_700)],
    )
    us = issued_invoice(
        organisation=OrganisationFactory(name="Yankee Inc"),
        number="INV-2026-000104",
        currency="USD",
        status="paid",
        tax_rule="none",
        tax_rate_bp=0,
        tax_name="",
        issued_at=datetime(2026, 10, 20, tzinfo=UTC),
        lines=[plan_line(unit_amount=5_000)],
        details=billing_details(company_name="", country="US", vat_number=""),
    )
    credit_note(
        us,
        net=1_000,
        tax=0,
        on=datetime(2026, 10, 21, tzinfo=UTC),
        number="CN-2026-000008",
        outcome="refunded_outside",
    )
    issued_invoice(number="INV-2026-000100", issued_at=datetime(2026, 9, 30, 23, 59, tzinfo=UTC))
    issued_invoice(number="INV-2026-000105", issued_at=datetime(2026, 11, 1, tzinfo=UTC))
    return {"ie": ie, "de": de, "us": us}


def download(client, **params):
    response = client.get(URL, params)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    return response, b"".join(response.streaming_content).decode()


def test_a_month_lists_every_invoice_and_credit_note_exactly(client_for, billing_staff, october):
    response, body = download(client_for(billing_staff), period="month", year=2026, month=10)
    assert response["Content-Disposition"] == 'attachment; filename="finance-export-2026-10.csv"'
    assert body.splitlines() == [
        "number,type,date,organisation,country,vat_number,reverse_charge,net,tax_rate,tax,"
        "total,currency,paid,credited,refunded,status",
        "INV-2026-000101,invoice,2026-10-01,Acme Trading Ltd,IE,IE6388047V,no,"
        "100.00,23.00,23.00,123.00,EUR,123.00,24.60,24.60,paid",
        "CN-2026-000007,credit_note,2026-10-12,Acme Trading Ltd,IE,IE6388047V,no,"
        "-20.00,23.00,-4.60,-24.60,EUR,,,-24.60,issued",
        "INV-2026-000103,invoice,2026-10-15,Acme Trading Ltd,IE,IE6388047V,no,"
        "77.00,23.00,17.71,94.71,EUR,0.00,0.00,0.00,void",
        # No company name printed: the organisation's name.
        "INV-2026-000104,invoice,2026-10-20,Yankee Inc,US,,no,"
        "50.00,0.00,0.00,50.00,USD,50.00,0.00,10.00,paid",
        "CN-2026-000008,credit_note,2026-10-21,Yankee Inc,US,,no,"
        "-10.00,0.00,0.00,-10.00,USD,,,-10.00,issued",
        # Text a spreadsheet would run as a formula starts with an apostrophe.
        'INV-2026-000102,invoice,2026-10-31,"\'=HYPERLINK(""http://x.test"")",DE,\'+DE123,'
        "yes,499.00,0.00,0.00,499.00,EUR,0.00,0.00,0.00,open",
    ]
    assert body.endswith("\r\n")


def test_its_totals_equal_the_dashboard_for_the_month(client_for, billing_staff, october):
    _, body = download(client_for(billing_staff), period="month", year=2026, month=10)
    rows = list(csv.DictReader(io.StringIO(body)))
    invoiced, credited = {}, {}
    for row in rows:
        cents = round(float(row["total"]) * 100)
        if row["type"] == "invoice" and row["status"] != "void":
            invoiced[row["currency"]] = invoiced.get(row["currency"], 0) + cents
        elif row["type"] == "credit_note":
            credited[row["currency"]] = credited.get(row["currency"], 0) - cents
    months = ops_figures.last_months(now=NOW)
    figures = ops_figures.money(months=months, now=NOW)
    october_index = [m.label for m in months].index("Oct 2026")
    assert invoiced == {c: figures[c]["invoiced"][october_index] for c in figures}
    assert credited == {c: figures[c]["credited"][october_index] for c in figures}
    assert invoiced == {"EUR": 12_300 + 49_900, "USD": 5_000}
    assert credited == {"EUR": 2_460, "USD": 1_000}


def test_a_quarter_holds_its_three_months(client_for, billing_staff, october):
    response, body = download(client_for(billing_staff), period="quarter", year=2026, quarter=4)
    assert response["Content-Disposition"] == 'attachment; filename="finance-export-2026-Q4.csv"'
    numbers = [line.split(",")[0] for line in body.splitlines()[1:]]
    assert numbers == [
        "INV-2026-000101",
        "CN-2026-000007",
        "INV-2026-000103",
        "INV-2026-000104",
        "CN-2026-000008",
        "INV-2026-000102",
        "INV-2026-000105",
    ]
    _, q3 = download(client_for(billing_staff), period="quarter", year=2026, quarter=3)
    assert [line.split(",")[0] for line in q3.splitlines()[1:]] == ["INV-2026-000100"]


def test_an_empty_month_is_a_header_only_file(client_for, billing_staff):
    _, body = download(client_for(billing_staff), period="month", year=2026, month=2)
    assert body.splitlines() == [",".join(COLUMNS)]


def test_the_same_period_twice_gives_the_same_file(client_for, billing_staff, october):
    client = client_for(billing_staff)
    assert (
        download(client, period="month", year=2026, month=10)[1]
        == download(client, period="month", year=2026, month=10)[1]
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"period": "month", "year": "2026", "month": "13"}, "Select a valid choice."),
        ({"period": "quarter", "year": "2026", "quarter": "5"}, "Select a valid choice."),
        ({"period": "month", "year": "2026"}, "Choose which month."),
        ({"period": "week", "year": "2026", "month": "1"}, "Select a valid choice."),
        ({"period": "month", "year": "twenty", "month": "1"}, "Enter a year, e.g. 2026."),
        ({"period": "month", "year": "", "month": "1"}, "Enter a year, e.g. 2026."),
        ({"period": "month", "year": "2026", "month": "12"}, "December 2026 has not started yet."),
        (
            {"period": "quarter", "year": "2027", "quarter": "1"},
            "Q1 2027 (January – March) has not started yet.",
        ),
    ],
)
def test_bad_periods_are_refused_with_a_message_and_nothing_streamed(
    client_for, billing_staff, october, params, message
):
    response = client_for(billing_staff).get(URL, params)
    assert response.status_code == 400
    assert not response.streaming
    assert response["Content-Type"].startswith("text/html")
    assert message in response.content.decode()


def test_the_current_month_exports_what_was_issued_so_far(client_for, billing_staff, october):
    _, body = download(client_for(billing_staff), period="month", year=2026, month=11)
    assert [line.split(",")[0] for line in body.splitlines()[1:]] == ["INV-2026-000105"]


def test_without_a_period_the_form_is_shown_set_to_last_month(client_for, billing_staff):
    response = client_for(billing_staff).get(URL)
    assert response.status_code == 200
    body = response.content.decode()
    assert (
        '<input type="radio" name="period" value="month" id="id_period_0" required checked>' in body
    )
    assert '<option value="10" selected>10 – October</option>' in body
    assert 'name="year" value="2026"' in body


def test_read_only_support_staff_may_not_export(client_for, october):
    response = client_for(staff_user(staff.READ_ONLY)).get(
        URL, {"period": "month", "year": "2026", "month": "10"}
    )
    assert response.status_code == 403
    assert not response.streaming


def test_a_customer_gets_the_admin_sign_in(client_for, october):
    response = client_for(UserFactory()).get(URL, {"period": "month", "year": 2026, "month": 10})
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_one_query_whatever_the_number_of_rows(client_for, billing_staff, october):
    client = client_for(billing_staff)
    params = {"period": "month", "year": 2026, "month": 10}
    download(client, **params)

    def queries():
        with CaptureQueriesContext(connection) as captured:
            response, body = download(client, **params)
        return len(captured), len(body.splitlines())

    few, few_rows = queries()
    for n in range(40):
        issued_invoice(number=f"INV-2026-9{n:05d}", issued_at=datetime(2026, 10, 5, tzinfo=UTC))
    many, many_rows = queries()
    assert (few_rows, many_rows) == (7, 47)
    assert many == few
