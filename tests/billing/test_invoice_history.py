"""Invoice History for accountants: filters by year, status and type, search by number, keyset
pages and the CSV export of the filtered list (billing.views.invoices, invoices_export)."""

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.invoice_export import COLUMNS
from billing.models import CreditNote, Invoice
from core.keyset import cursor_encode
from tests.billing.factories import billing_details, issued_invoice, plan_line

pytestmark = pytest.mark.django_db

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
Status = Invoice.Status
Kind = Invoice.Kind


@pytest.fixture(autouse=True)
def _clock(time_machine):
    time_machine.move_to(NOW, tick=False)


@pytest.fixture(autouse=True)
def _berlin(org):
    org.time_zone = "Europe/Berlin"
    org.save(update_fields=["time_zone"])


def at(year, month, day, hour=9) -> datetime:
    return datetime(year, month, day, hour, tzinfo=BERLIN)


def invoice(org, number, issued_at, **fields) -> Invoice:
    """An issued €100.00 + 23% VAT invoice (€123.00) for the month from `issued_at`."""
    fields.setdefault("period_start", issued_at)
    fields.setdefault("period_end", issued_at + timedelta(days=31))
    return issued_invoice(
        organisation=org,
        number=number,
        issued_at=issued_at,
        lines=[plan_line(unit_amount=10_000)],
        **fields,
    )


def credit_note(invoice, number, issued_at, total=1_230, **fields) -> CreditNote:
    """A credit note as billing.credit_notes records it (built straight in the database: the
    page only reads it): `total` tax included at the invoice's 23%."""
    tax = round(total * 23 / 123)
    values = {
        "organisation": invoice.organisation,
        "invoice": invoice,
        "number": number,
        "reason": CreditNote.Reason.GOODWILL,
        "outcome": CreditNote.Outcome.BALANCE,
        "currency": invoice.currency,
        "subtotal": total - tax,
        "tax_amount": tax,
        "total": total,
        "issued_at": issued_at,
        "pdf": b"%PDF-1.7",
        **fields,
    }
    note = CreditNote.objects.create(**values)
    Invoice.objects.filter(pk=invoice.pk).update(amount_credited=F("amount_credited") + total)
    return note


def many_invoices(
    org, count, *, first: datetime, prefix="INV-2025", start=0, **fields
) -> list[Invoice]:
    """`count` paid €123.00 invoices a day apart from `first`, numbered from `start` + 1, in
    one INSERT."""
    rows = [
        Invoice(
            organisation=org,
            number=f"{prefix}-{start + n:06d}",
            kind=fields.get("kind", Kind.SUBSCRIPTION),
            status=fields.get("status", Status.PAID),
            currency="EUR",
            subtotal=10_000,
            tax_amount=2_300,
            total=12_300,
            amount_paid=12_300 if fields.get("status", Status.PAID) == Status.PAID else 0,
            tax_rule="standard",
            tax_rate_bp=2300,
            tax_name="VAT",
            plan_name="Professional",
            billing_cycle="monthly",
            period_start=first + timedelta(days=n),
            period_end=first + timedelta(days=n + 31),
            billing_details=billing_details(),
            payment_method_kind="card",
            issued_at=first + timedelta(days=n),
            due_at=first + timedelta(days=n),
        )
        for n in range(1, count + 1)
    ]
    return Invoice.objects.bulk_create(rows)


def history(client, org, **params):
    return client.get(reverse("billing:invoices", args=[org.slug]), params)


def export(client, org, **params):
    return client.get(reverse("billing:invoices_export", args=[org.slug]), params)


def numbers(response) -> list[str]:
    """The number of each row listed (an invoice or a credit note), in page order; [] when
    the page lists nothing."""
    assert response.status_code == 200
    body = response.content.decode()
    if "<tbody>" not in body:
        return []
    rows = re.findall(r"<tr[ >](.*?)</tr>", body.split("<tbody>")[1], re.S)
    return [re.search(r"(?:INV|CN)-\d{4}-\d{6}", row).group(0) for row in rows]


def text(response) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", response.content.decode()).split())


def csv_rows(response) -> list[dict]:
    assert response.status_code == 200
    content = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(content)))


def link(response, rel: str) -> str:
    """The query string of the page's Newer (prev) or Older (next) link."""
    match = re.search(rf'href="\?([^"]*)" rel="{rel}"', response.content.decode())
    assert match, f"no {rel} link"
    return match.group(1).replace("&amp;", "&")


@pytest.fixture
def books(org):
    """Acme's invoices over two years, newest first:

    INV-2027-000003  upgrade   open  issued 1 Jan 2027 00:30 Berlin (31 Dec 2026 23:30 UTC)
    INV-2026-000004  overage   paid  issued 15 Dec 2026
    INV-2026-000002  subscription paid 1 Jun 2026, with CN-2026-000001 and CN-2027-000001
    INV-2026-000001  subscription void  1 May 2026
    INV-2025-000009  subscription paid 1 Dec 2025
    """
    return {
        "upgrade": invoice(
            org,
            "INV-2027-000003",
            datetime(2026, 12, 31, 23, 30, tzinfo=UTC),
            kind=Kind.UPGRADE,
        ),
        "overage": invoice(
            org, "INV-2026-000004", at(2026, 12, 15), kind=Kind.OVERAGE, status=Status.PAID
        ),
        "june": invoice(org, "INV-2026-000002", at(2026, 6, 1), status=Status.PAID),
        "may": invoice(org, "INV-2026-000001", at(2026, 5, 1), status=Status.VOID),
        "old": invoice(org, "INV-2025-000009", at(2025, 12, 1), status=Status.PAID),
    }


@pytest.fixture
def credited(books):
    june = books["june"]
    return [
        credit_note(june, "CN-2026-000001", at(2026, 6, 10), total=2_460),
        credit_note(
            june,
            "CN-2027-000001",
            at(2027, 1, 20),
            total=1_230,
            outcome=CreditNote.Outcome.REFUND,
            status=CreditNote.Status.REFUND_PENDING,
        ),
    ]


# Filters -------------------------------------------------------------------------------------


def test_without_filters_every_invoice_newest_first_with_its_credit_notes(
    client_for, credited, org, admin
):
    page = history(client_for(admin), org)
    assert numbers(page) == [
        "INV-2027-000003",
        "INV-2026-000004",
        "INV-2026-000002",
        "CN-2026-000001",
        "CN-2027-000001",
        "INV-2026-000001",
        "INV-2025-000009",
    ]
    body = page.content.decode()
    # The years offered: from the first invoice to the last credit note, in Berlin.
    assert re.findall(r'<option value="(\d{4})"', body) == ["2027", "2026", "2025"]
    for label in ("Year", "Status", "Type", "Number"):
        assert re.search(rf'<label for="id_\w+">{label}</label>', body)
    assert "Clear filters" not in body
    export_href = reverse("billing:invoices_export", args=[org.slug])
    assert f'href="{export_href}" download>Export CSV' in body


def test_the_year_is_the_organisations_as_the_dates_shown(client_for, books, org, admin):
    client = client_for(admin)
    # 31 Dec 2026 23:30 UTC is 1 Jan 2027 in Berlin: the upgrade is a 2027 invoice.
    assert numbers(history(client, org, year="2027")) == ["INV-2027-000003"]
    assert numbers(history(client, org, year="2026")) == [
        "INV-2026-000004",
        "INV-2026-000002",
        "INV-2026-000001",
    ]
    org.time_zone = "UTC"
    org.save(update_fields=["time_zone"])
    assert history(client, org, year="2027").status_code == 400  # no invoice in 2027 there
    assert "INV-2027-000003" in numbers(history(client, org, year="2026"))


def test_status_and_type_filter_together_and_are_kept_in_the_form(client_for, books, org, admin):
    client = client_for(admin)
    assert numbers(history(client, org, status="paid")) == [
        "INV-2026-000004",
        "INV-2026-000002",
        "INV-2025-000009",
    ]
    assert numbers(history(client, org, type="subscription")) == [
        "INV-2026-000002",
        "INV-2026-000001",
        "INV-2025-000009",
    ]
    assert numbers(history(client, org, type="overage")) == ["INV-2026-000004"]
    assert numbers(history(client, org, type="upgrade", status="open")) == ["INV-2027-000003"]
    page = history(client, org, type="subscription", status="paid", year="2026")
    assert numbers(page) == ["INV-2026-000002"]
    body = page.content.decode()
    assert '<option value="2026" selected>2026</option>' in body
    assert '<option value="paid" selected>Paid</option>' in body
    assert '<option value="subscription" selected>Subscription period</option>' in body
    assert f'<a href="{reverse("billing:invoices", args=[org.slug])}">Clear filters</a>' in body
    # The export link carries the same filters.
    export_href = reverse("billing:invoices_export", args=[org.slug])
    assert f'href="{export_href}?year=2026&amp;status=paid&amp;type=subscription"' in body


def test_the_type_credit_note_lists_credit_notes_as_rows_of_their_own(
    client_for, credited, org, billing_user
):
    client = client_for(billing_user)
    page = history(client, org, type="credit_note")
    assert numbers(page) == ["CN-2027-000001", "CN-2026-000001"]
    rows = [
        " ".join(re.sub(r"<[^>]+>", " ", row).split())
        for row in re.findall(r"<tr data-credit-note[^>]*>(.*?)</tr>", page.content.decode(), re.S)
    ]
    assert rows == [
        "Credit note CN-2027-000001 (PDF) On invoice INV-2026-000002 (PDF) · Professional "
        "20 Jan 2027 1 Jun 2026 – 2 Jul 2026 −€12.30 Refund pending",
        "Credit note CN-2026-000001 (PDF) On invoice INV-2026-000002 (PDF) · Professional "
        "10 Jun 2026 1 Jun 2026 – 2 Jul 2026 −€24.60 Added to balance",
    ]
    assert numbers(history(client, org, type="credit_note", year="2027")) == ["CN-2027-000001"]


def test_a_status_with_credit_notes_is_left_out_with_a_notice(client_for, credited, org, admin):
    page = history(client_for(admin), org, type="credit_note", status="void")
    assert numbers(page) == ["CN-2027-000001", "CN-2026-000001"]
    assert "Status applies to invoices, so every credit note is shown" in text(page)


def test_search_by_number_exact_or_beginning_any_case_trimmed(client_for, credited, org, admin):
    client = client_for(admin)
    assert numbers(history(client, org, number="INV-2026-000002")) == [
        "INV-2026-000002",
        "CN-2026-000001",
        "CN-2027-000001",
    ]
    assert numbers(history(client, org, number="  inv-2026-00000 ")) == [
        "INV-2026-000004",
        "INV-2026-000002",
        "CN-2026-000001",
        "CN-2027-000001",
        "INV-2026-000001",
    ]
    assert numbers(history(client, org, number="inv-2025")) == ["INV-2025-000009"]
    assert numbers(history(client, org, number="i", year="2025")) == ["INV-2025-000009"]
    # A credit-note number lists credit notes.
    assert numbers(history(client, org, number="cn-2027-000001")) == ["CN-2027-000001"]
    assert numbers(history(client, org, number=" Cn-2026 ")) == ["CN-2026-000001"]
    assert numbers(history(client, org, number="c")) == ["CN-2027-000001", "CN-2026-000001"]
    page = history(client, org, number="INV-2026-000099")
    assert numbers(page) == []
    assert "No invoices match these filters." in text(page)
    page = history(client, org, number="CN-2028")
    assert "No credit notes match these filters." in text(page)


def test_an_empty_result_says_so_with_a_reset_link(client_for, books, org, admin):
    page = history(client_for(admin), org, year="2025", status="open")
    assert page.status_code == 200
    body = page.content.decode()
    assert "<tbody>" not in body
    assert "No invoices match these filters." in text(page)
    assert f'<a href="{reverse("billing:invoices", args=[org.slug])}">reset the filters</a>' in body
    assert "Export CSV" not in body


def test_no_invoices_yet_shows_no_filters(client_for, org, admin):
    page = history(client_for(admin), org)
    assert "No invoices yet." in text(page)
    assert "Apply filters" not in text(page)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"year": "2019"}, "There are no invoices in that year; choose one from the list."),
        ({"year": "twenty"}, "There are no invoices in that year; choose one from the list."),
        ({"status": "refunded"}, "Choose a status from the list."),
        ({"type": "donation"}, "Choose a type from the list."),
        ({"number": "2026-000001"}, "Enter an invoice number (INV-…) or a credit note number"),
        ({"number": "INV-%"}, "Enter an invoice number (INV-…) or a credit note number"),
        ({"number": "INV_2026"}, "Enter an invoice number (INV-…) or a credit note number"),
        ({"number": "<script>"}, "Enter an invoice number (INV-…) or a credit note number"),
        ({"number": "INV-" + "1" * 40}, "Enter an invoice number (INV-…) or a credit note number"),
        (
            {"number": "CN-2026", "type": "subscription"},
            "CN-… numbers are credit notes: choose the type Credit note or All types",
        ),
        (
            {"number": "INV-2026", "type": "credit_note"},
            "INV-… numbers are invoices: choose an invoice type or All types",
        ),
    ],
)
def test_bad_filters_get_a_clear_message_and_no_list(
    client_for, books, org, admin, params, message
):
    client = client_for(admin)
    for response in (history(client, org, **params), export(client, org, **params)):
        assert response.status_code == 400
        body = response.content.decode()
        assert message in text(response)
        assert 'aria-invalid="true"' in body
        assert "Check the filters above." in text(response)
        assert "<tbody>" not in body
        assert "Content-Disposition" not in response


def test_another_organisations_invoices_never_appear(
    client_for, credited, org, admin, other_org, outsider
):
    theirs = invoice(other_org, "INV-2026-000777", at(2026, 7, 1), status=Status.PAID)
    credit_note(theirs, "CN-2026-000777", at(2026, 7, 2))
    client = client_for(admin)
    for params in (
        {},
        {"year": "2026"},
        {"status": "paid"},
        {"type": "credit_note"},
        {"number": "INV-2026-000777"},
        {"number": "CN-2026-000777"},
        {"number": "INV"},
        {"number": "CN"},
    ):
        listed = numbers(history(client, org, **params))
        assert "INV-2026-000777" not in listed, params
        assert "CN-2026-000777" not in listed, params
        # Acme's own rows are there, so the absence above is not an empty page's.
        searched_theirs = params.get("number", "").endswith("000777")
        assert bool(listed) != searched_theirs, params
        exported = b"".join(export(client, org, **params).streaming_content).decode()
        assert "000777" not in exported, params
    # A cursor made from their invoice only places the page in time: still Acme's rows.
    page = history(
        client, org, before=cursor_encode(theirs.issued_at + timedelta(days=1), theirs.pk)
    )
    assert numbers(page)[0] == "INV-2026-000002"
    assert "000777" not in page.content.decode()
    # Their admin gets a 404 for Acme's page and export, and sees nothing of Acme under theirs.
    outside = client_for(outsider)
    assert history(outside, org).status_code == 404
    assert export(outside, org).status_code == 404
    assert "INV-2026-000002" not in history(outside, other_org).content.decode()
    assert "INV-2026-000002" not in b"".join(export(outside, other_org).streaming_content).decode()


def test_members_may_not_export(client_for, books, org, member):
    assert export(client_for(member), org).status_code == 403


# Keyset pages --------------------------------------------------------------------------------


def test_pages_walk_older_and_newer_with_the_filters_kept_and_no_offset(client_for, org, admin):
    many_invoices(org, 45, first=at(2025, 1, 1))
    many_invoices(org, 5, first=at(2025, 1, 1, 10), prefix="INV-2024", status=Status.OPEN)
    paid = list(
        Invoice.objects.filter(organisation=org, status=Status.PAID)
        .order_by("-issued_at", "-id")
        .values_list("number", flat=True)
    )
    client = client_for(admin)
    seen, pages = [], []
    with CaptureQueriesContext(connection) as queries:
        page = history(client, org, status="paid", year="2025")
        while True:
            pages.append(page)
            seen += numbers(page)
            if 'rel="next"' not in page.content.decode():
                break
            query = link(page, "next")
            assert query.startswith("year=2025&status=paid&before=")
            page = client.get(reverse("billing:invoices", args=[org.slug]) + "?" + query)
    assert seen == paid
    assert [len(numbers(p)) for p in pages] == [20, 20, 5]
    assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)
    # Back from the last page: Newer gives the middle page again, then the first.
    middle = client.get(reverse("billing:invoices", args=[org.slug]) + "?" + link(pages[2], "prev"))
    assert numbers(middle) == numbers(pages[1])
    first = client.get(reverse("billing:invoices", args=[org.slug]) + "?" + link(middle, "prev"))
    assert numbers(first) == numbers(pages[0])
    assert 'rel="prev"' not in first.content.decode()
    # Paging twice gives the same pages.
    again = client.get(reverse("billing:invoices", args=[org.slug]) + "?" + link(pages[0], "next"))
    assert numbers(again) == numbers(pages[1])


NAIVE = "MjAyNi0wMS0wMVQwMDowMDowMHwx"  # "2026-01-01T00:00:00|1": no time zone


@pytest.mark.parametrize("cursor", ["garbage", "!!", "MjAyNnwx", "bm90LWEtZGF0ZXwx", "%00", NAIVE])
def test_a_bad_page_link_shows_the_newest_page_with_a_notice(client_for, books, org, admin, cursor):
    for key in ("before", "after"):
        page = history(client_for(admin), org, **{key: cursor})
        assert numbers(page)[0] == "INV-2027-000003"
        assert "That page link is no longer valid, so the newest invoices are shown." in text(page)


def test_an_old_page_link_past_the_end_says_so(client_for, books, org, admin):
    page = history(client_for(admin), org, before=cursor_encode(at(2020, 1, 1), 1))
    assert "No older invoices." in text(page)


# Query counts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [{}, {"status": "paid", "year": "2025"}, {"type": "credit_note"}, {"number": "INV-2025"}],
)
def test_the_page_costs_the_same_queries_as_the_list_grows(client_for, org, admin, params):
    def grow(count, offset):
        invoices = many_invoices(
            org, count, first=at(2025, 1, 1) + timedelta(days=offset), start=offset
        )
        for index, each in enumerate(invoices):
            credit_note(each, f"CN-2025-{offset + index:06d}", each.issued_at + timedelta(hours=1))

    grow(2, 0)
    client = client_for(admin)
    history(client, org, **params)
    with CaptureQueriesContext(connection) as few:
        assert history(client, org, **params).status_code == 200
    grow(40, 100)
    with CaptureQueriesContext(connection) as many:
        page = history(client, org, **params)
    assert len(numbers(page)) >= 20
    assert len(many.captured_queries) == len(few.captured_queries)
    with CaptureQueriesContext(connection) as older:
        client.get(reverse("billing:invoices", args=[org.slug]) + "?" + link(page, "next"))
    assert len(older.captured_queries) == len(few.captured_queries)


# CSV export ----------------------------------------------------------------------------------


def test_the_export_is_the_filtered_list_in_major_units(client_for, credited, org, books, admin):
    Invoice.objects.filter(pk=books["upgrade"].pk).update(credit_applied=2_000)
    response = export(client_for(admin), org)
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="invoice-history-acme.csv"'
    assert response["Cache-Control"] == "private, no-store"
    rows = csv_rows(response)
    assert list(rows[0]) == [
        "type",
        "number",
        "invoice",
        "date",
        "period_start",
        "period_end",
        "net",
        "tax",
        "total",
        "currency",
        "status",
        "credited",
        "credit_applied",
        "paid",
        "due",
    ]
    assert [tuple(row.values()) for row in rows] == [
        ("upgrade", "INV-2027-000003", "", "2027-01-01", "2027-01-01", "2027-02-01",
         "100.00", "23.00", "123.00", "EUR", "open", "0.00", "20.00", "0.00", "103.00"),
        ("overage", "INV-2026-000004", "", "2026-12-15", "2026-12-15", "2027-01-15",
         "100.00", "23.00", "123.00", "EUR", "paid", "0.00", "0.00", "123.00", "0.00"),
        ("subscription", "INV-2026-000002", "", "2026-06-01", "2026-06-01", "2026-07-02",
         "100.00", "23.00", "123.00", "EUR", "paid", "36.90", "0.00", "123.00", "0.00"),
        ("credit_note", "CN-2026-000001", "INV-2026-000002", "2026-06-10", "2026-06-01",
         "2026-07-02", "-20.00", "-4.60", "-24.60", "EUR", "issued", "", "", "", ""),
        ("credit_note", "CN-2027-000001", "INV-2026-000002", "2027-01-20", "2026-06-01",
         "2026-07-02", "-10.00", "-2.30", "-12.30", "EUR", "refund_pending", "", "", "", ""),
        ("subscription", "INV-2026-000001", "", "2026-05-01", "2026-05-01", "2026-06-01",
         "100.00", "23.00", "123.00", "EUR", "void", "0.00", "0.00", "0.00", "0.00"),
        ("subscription", "INV-2025-000009", "", "2025-12-01", "2025-12-01", "2026-01-01",
         "100.00", "23.00", "123.00", "EUR", "paid", "0.00", "0.00", "123.00", "0.00"),
    ]  # fmt: skip


def test_the_export_follows_the_filters_and_names_them(client_for, credited, org, admin):
    client = client_for(admin)
    response = export(client, org, year="2026", status="paid", type="subscription")
    assert response["Content-Disposition"] == (
        'attachment; filename="invoice-history-acme-2026-paid-subscription.csv"'
    )
    assert [row["number"] for row in csv_rows(response)] == [
        "INV-2026-000002",
        "CN-2026-000001",
        "CN-2027-000001",
    ]
    response = export(client, org, type="credit_note", year="2027")
    assert response["Content-Disposition"] == (
        'attachment; filename="invoice-history-acme-2027-credit_note.csv"'
    )
    assert [row["number"] for row in csv_rows(response)] == ["CN-2027-000001"]
    response = export(client, org, number=" inv-2025 ")
    assert response["Content-Disposition"] == (
        'attachment; filename="invoice-history-acme-inv-2025.csv"'
    )
    assert [row["number"] for row in csv_rows(response)] == ["INV-2025-000009"]
    empty = export(client, org, year="2025", status="open")
    assert b"".join(empty.streaming_content).decode().splitlines() == [",".join(COLUMNS)]


def test_a_long_export_streams_in_pieces_and_is_the_same_twice(client_for, org, admin):
    many_invoices(org, 1_200, first=at(2023, 1, 1))
    client = client_for(admin)
    response = export(client, org)
    pieces = list(response.streaming_content)
    assert len(pieces) >= 2
    assert all(len(piece) < 80 * 1024 for piece in pieces)
    content = b"".join(pieces)
    lines = content.decode().splitlines()
    assert len(lines) == 1_201
    assert lines[1].startswith("subscription,INV-2025-001200,,")
    assert lines[-1].startswith("subscription,INV-2025-000001,,2023-01-02,")
    assert b"".join(export(client, org).streaming_content) == content
