"""Invoice PDFs (billing.pdf), read back as text."""

import io
import itertools
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pypdf import PdfReader

from billing.models import BalanceEntry, CreditNote, CreditNoteLine, Invoice, InvoiceDocument
from billing.pdf import (
    credit_note_pdf_bytes,
    invoice_pdf_bytes,
    invoice_pdf_html,
    tax_rate_display,
)
from billing.tax import REVERSE_CHARGE_NOTE
from tests.accounts.factories import OrganisationFactory
from tests.billing.factories import billing_details, issued_invoice, local, plan_line

pytestmark = pytest.mark.django_db


def pdf_pages(pdf: bytes) -> list[str]:
    """Each page's text with runs of whitespace (line wraps included) as one space."""
    return [" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages]


def pdf_text(pdf: bytes) -> str:
    return " ".join(pdf_pages(pdf))


@dataclass(frozen=True)
class Run:
    """A run of text where the PDF shows it, in points: where it starts and where its advance
    ends (after any space the text is stripped of), and its baseline."""

    text: str
    left: float
    right: float
    baseline: float


class _Font:
    """A font as WeasyPrint embeds it: two-byte glyph codes (Identity-H), their widths (/W) and
    their text (/ToUnicode)."""

    def __init__(self, font):
        assert font["/Encoding"] == "/Identity-H"
        glyphs = font["/DescendantFonts"][0].get_object()
        self.default_width = glyphs.get("/DW", 1000)
        self.widths = {}
        spec = list(glyphs.get("/W", []))
        while spec:
            first, rest = spec[0], spec[1]
            if isinstance(rest, list):  # first [w1 w2 ...]
                self.widths.update((first + i, width) for i, width in enumerate(rest))
                spec = spec[2:]
            else:  # first last width
                self.widths.update((code, spec[2]) for code in range(first, rest + 1))
                spec = spec[3:]
        cmap = font["/ToUnicode"].get_object().get_data().decode("latin-1")
        self.text = {}
        for block in re.findall(r"beginbfchar(.*?)endbfchar", cmap, re.S):
            for code, text in re.findall(r"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>", block):
                self.text[int(code, 16)] = bytes.fromhex(text).decode("utf-16-be")

    def show(self, items, size: float) -> tuple[str, float]:
        """The text a TJ operator shows and how far it advances, in text space."""
        text, advance = [], 0.0
        for item in items:
            if isinstance(item, int | float):
                advance -= item / 1000 * size
                continue
            data = item.original_bytes
            for i in range(0, len(data), 2):
                code = int.from_bytes(data[i : i + 2], "big")
                text.append(self.text[code])
                advance += self.widths.get(code, self.default_width) / 1000 * size
        return "".join(text), advance


class _PageRuns:
    """A page's runs of text, one per TJ operator (WeasyPrint shows each text box with one),
    measured like `pdftotext -bbox` with the widths the PDF's fonts carry."""

    def __init__(self, page):
        self.fonts = {
            name: _Font(ref.get_object()) for name, ref in page["/Resources"]["/Font"].items()
        }
        self.runs: list[Run] = []
        self.matrix = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
        page.extract_text(visitor_operand_before=self.visit)

    def visit(self, operator, operands, cm, _tm):
        if operator == b"Tm":
            self.matrix = [float(value) for value in operands]
        elif operator == b"Tf":
            self.font, self.size = self.fonts[operands[0]], float(operands[1])
        elif operator == b"TJ":
            text, advance = self.font.show(operands[0], self.size)
            # The text matrix's origin through the current transformation; the text is upright.
            scale, x, y = self.matrix[0], self.matrix[4], self.matrix[5]
            left = x * cm[0] + y * cm[2] + cm[4]
            baseline = x * cm[1] + y * cm[3] + cm[5]
            self.runs.append(Run(text.strip(), left, left + advance * scale * cm[0], baseline))
            self.matrix[4] += advance * scale


def text_runs(pdf: bytes) -> list[list[Run]]:
    """Each page's runs of text, in the order the PDF draws them."""
    return [_PageRuns(page).runs for page in PdfReader(io.BytesIO(pdf)).pages]


def overage_line(**fields):
    return {
        "kind": "overage",
        "description": "Transaction overage, November 2026 (12 × 1,000 transactions)",
        "quantity": 12,
        "unit_amount": 450,
        "period_start": local(2026, 11, 1),
        "period_end": local(2026, 12, 1),
        **fields,
    }


def test_card_invoice_with_vat():
    invoice = issued_invoice(
        number="INV-2026-000123",
        lines=[
            plan_line(period_start=local(2026, 12, 1), period_end=local(2027, 1, 1)),
            overage_line(),
        ],
        tax_name="VAT",
        tax_rate_bp=2300,
    )

    text = pdf_text(invoice_pdf_bytes(invoice=invoice))

    assert text.startswith(f"{settings.PRODUCT_NAME} ")
    assert "Invoice INV-2026-000123" in text
    assert "Issue date 1 Dec 2026" in text
    assert "Due date 1 Dec 2026" in text
    assert "Status Open — due 1 Dec 2026" in text
    # An organisation in Berlin: its December starts at 23:00 UTC on 30 November.
    assert "Billing period 1 Dec 2026 – 31 Dec 2026" in text
    assert "Professional plan, monthly" in text
    assert "Professional plan (monthly) 1 Dec 2026 – 31 Dec 2026 1 €499.00 €499.00" in text
    assert (
        "Transaction overage, November 2026 (12 × 1,000 transactions) "
        "1 Nov 2026 – 30 Nov 2026 12 €4.50 €54.00"
    ) in text
    assert "Subtotal €553.00" in text
    assert "VAT 23% €127.19" in text
    assert "Total €680.19" in text
    assert "Amount paid" not in text
    assert "Acme Trading Ltd" in text
    assert "12 Grand Canal Street Dublin D02 F654 Ireland" in text
    assert "VAT number: IE6388047V" in text
    assert "accounts@acme.example" in text
    assert "PO number" not in text
    assert "Will be charged to the card on file." in text
    assert "Reverse charge" not in text
    seller = settings.SELLER
    assert (
        f"{seller['name']} · {seller['address']} VAT {seller['vat_number']} · {seller['email']}"
        in (text)
    )
    assert "Page 1 of 1" in text


def test_paid_card_invoice_shows_payment_and_amount_due():
    invoice = issued_invoice(status=Invoice.Status.PAID, paid_at=local(2026, 12, 1, 0, 6))

    text = pdf_text(invoice_pdf_bytes(invoice=invoice))

    assert "Status Paid on 1 Dec 2026" in text
    assert "Total €613.77 Amount paid €613.77 Amount due €0.00" in text
    assert "Paid by card on 1 Dec 2026." in text
    assert "Will be charged" not in text


def test_reverse_charge_invoice_has_no_vat_and_the_legal_mention():
    invoice = issued_invoice(
        tax_rule="reverse_charge",
        tax_name="VAT",
        tax_rate_bp=0,
        tax_note=REVERSE_CHARGE_NOTE,
        details=billing_details(
            company_name="Globex GmbH",
            address_line1="Leopoldstraße 10",
            city="München",
            postal_code="80802",
            region="Bayern",
            country="DE",
            country_name="Germany",
            vat_number="DE136695976",
        ),
    )

    text = pdf_text(invoice_pdf_bytes(invoice=invoice))

    assert "Subtotal €499.00 VAT 0% €0.00 Total €499.00" in text
    assert REVERSE_CHARGE_NOTE in text
    assert "Globex GmbH Leopoldstraße 10 München 80802 Bayern Germany" in text
    assert "VAT number: DE136695976" in text


def test_no_tax_rule_still_prints_a_tax_line():
    invoice = issued_invoice(tax_rule="none", tax_name="Tax", tax_rate_bp=0)

    text = pdf_text(invoice_pdf_bytes(invoice=invoice))

    assert "Subtotal €499.00 Tax 0% €0.00 Total €499.00" in text


def test_bank_transfer_invoice_has_bank_details_reference_and_due_date():
    invoice = issued_invoice(
        number="INV-2026-000200",
        plan_name="Enterprise",
        billing_cycle="annual",
        payment_method_kind="bank_transfer",
        period_end=local(2027, 12, 1),
        due_at=local(2026, 12, 31, 0, 5),
        lines=[plan_line("Enterprise plan (annual)", 1_990_000)],
    )

    text = pdf_text(invoice_pdf_bytes(invoice=invoice))

    assert "Enterprise plan, annual" in text
    assert "Billing period 1 Dec 2026 – 30 Nov 2027" in text
    assert "Due date 31 Dec 2026" in text
    assert "Status Open — due 31 Dec 2026" in text
    assert "Please pay by bank transfer within 30 days" in text
    assert "Due date: 31 Dec 2026" in text
    assert "Amount: €24,477.00" in text
    assert settings.SELLER_BANK_DETAILS in text
    assert "Reference: INV-2026-000200" in text
    assert "Will be charged" not in text


def test_purchase_order_invoice_shows_the_po_number_and_due_date():
    invoice = issued_invoice(
        plan_name="Enterprise",
        billing_cycle="annual",
        payment_method_kind="purchase_order",
        period_end=local(2027, 12, 1),
        due_at=local(2026, 12, 31, 0, 5),
        lines=[plan_line("Enterprise plan (annual)", 1_990_000)],
        details=billing_details(po_number="PO-88231"),
    )

    text = pdf_text(invoice_pdf_bytes(invoice=invoice))

    assert "PO number: PO-88231" in text
    assert "Purchase order PO-88231" in text
    assert "Payment due by 31 Dec 2026 (30 days)" in text
    assert settings.SELLER_BANK_DETAILS in text
    assert f"Reference: {invoice.number}" in text


def test_revised_copy_is_marked_and_shows_the_current_billing_details():
    snapshot = billing_details()
    invoice = issued_invoice(details=snapshot)
    current = billing_details(
        company_name="Acme Holdings GmbH",
        address_line1="Friedrichstraße 100",
        city="Berlin",
        postal_code="10117",
        country="DE",
        country_name="Germany",
        vat_number="DE811907980",
        po_number="PO-2027-17",
    )

    text = pdf_text(
        invoice_pdf_bytes(
            invoice=invoice, revised_at=local(2027, 3, 5, 10), billing_details=current
        )
    )

    assert f"Invoice {invoice.number} REVISED COPY — issued 5 Mar 2027" in text
    assert "Replaces the copy issued 1 Dec 2026" in text
    assert "Acme Holdings GmbH Friedrichstraße 100 Berlin 10117 Germany" in text
    assert "VAT number: DE811907980" in text
    assert "PO number: PO-2027-17" in text
    assert "Acme Trading Ltd" not in text
    assert "IE6388047V Acme" not in text
    # The amounts and dates are the original's; the invoice itself is untouched.
    assert "Issue date 1 Dec 2026" in text
    assert "Total €613.77" in text
    invoice.refresh_from_db()
    assert invoice.billing_details == snapshot


def test_the_original_has_no_revised_marking():
    text = pdf_text(invoice_pdf_bytes(invoice=issued_invoice()))

    assert "REVISED" not in text


def test_billing_details_replace_the_snapshot_only_on_a_revised_copy():
    invoice = issued_invoice()

    with pytest.raises(ValueError, match="only on a revised copy"):
        invoice_pdf_html(invoice=invoice, billing_details=billing_details(company_name="Other"))


def test_customer_text_is_escaped():
    invoice = issued_invoice(
        details=billing_details(company_name='Smith <b>& Sons</b> "Ltd"', po_number="<PO&1>"),
        lines=[plan_line("Setup <script>alert(1)</script> & more")],
    )

    html = invoice_pdf_html(invoice=invoice)
    text = pdf_text(invoice_pdf_bytes(invoice=invoice))

    assert "Smith &lt;b&gt;&amp; Sons&lt;/b&gt; &quot;Ltd&quot;" in html
    assert "<b>" not in html
    assert "<script>" not in html
    assert 'Smith <b>& Sons</b> "Ltd"' in text
    assert "PO number: <PO&1>" in text
    assert "Setup <script>alert(1)</script> & more" in text


def test_long_company_name_wraps_inside_the_bill_to_block():
    name = "Globex Industrieanlagen und Maschinenbau Gesellschaft mit beschränkter Haftung & Co. KG"
    unbroken = "Aktiengesellschaftfürinternationaleintegrationsdienstleistungenundsoftware"
    invoice = issued_invoice(details=billing_details(company_name=f"{name} {unbroken}"))

    pages = pdf_pages(invoice_pdf_bytes(invoice=invoice))

    assert len(pages) == 1
    assert name in pages[0]


def test_many_lines_flow_onto_further_pages_with_the_totals_at_the_end():
    lines = [
        overage_line(description=f"Transaction overage, usage line {n:02d}", unit_amount=100 * n)
        for n in range(1, 41)
    ]
    invoice = issued_invoice(number="INV-2026-000777", lines=lines)

    pages = pdf_pages(invoice_pdf_bytes(invoice=invoice))

    assert len(pages) >= 2
    text = " ".join(pages)
    for n in range(1, 41):
        assert f"Transaction overage, usage line {n:02d}" in text
    assert "Transaction overage, usage line 40 1 Nov 2026 – 30 Nov 2026 12 €40.00 €480.00" in text
    assert f"Page 1 of {len(pages)}" in pages[0]
    assert "continued" not in pages[0]
    for page in pages[1:]:
        # Continuation pages name the invoice and repeat the column headings.
        assert "Invoice INV-2026-000777 · continued" in page
        assert "DESCRIPTION QTY UNIT PRICE AMOUNT" in page
    assert "Subtotal €9,840.00 VAT 23% €2,263.20 Total €12,103.20" in pages[-1]
    assert "Total €" not in pages[0]


def test_dates_follow_the_organisation_time_zone():
    # 23:30 UTC on 30 Nov is already 1 Dec in Berlin, still 30 Nov in New York.
    issued_at = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    berlin = issued_invoice(issued_at=issued_at)
    new_york = issued_invoice(
        organisation=OrganisationFactory(time_zone="America/New_York"), issued_at=issued_at
    )

    assert "Issue date 1 Dec 2026" in pdf_text(invoice_pdf_bytes(invoice=berlin))
    assert "Issue date 30 Nov 2026" in pdf_text(invoice_pdf_bytes(invoice=new_york))


def test_rendering_only_reads():
    invoice = issued_invoice()
    invoice = Invoice.objects.select_related("organisation").get(pk=invoice.pk)

    with CaptureQueriesContext(connection) as queries:
        invoice_pdf_bytes(invoice=invoice)

    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["SELECT"]
    assert not InvoiceDocument.objects.exists()


def test_html_references_no_outside_resource():
    html = invoice_pdf_html(invoice=issued_invoice(details=billing_details(po_number="PO-1")))

    assert "src=" not in html
    assert "href=" not in html
    assert "url(" not in html
    assert "@import" not in html


def test_weasyprint_reports_no_problem(caplog):
    # Unsupported CSS and refused fetches are only logged by WeasyPrint, never raised.
    invoice = issued_invoice(
        payment_method_kind="bank_transfer", details=billing_details(po_number="PO-1")
    )

    with caplog.at_level(logging.WARNING, logger="weasyprint"):
        invoice_pdf_bytes(invoice=invoice)

    assert [record.getMessage() for record in caplog.records] == []


# How far (points) an amount may end from where right-alignment puts it: the widths a PDF
# carries are rounded to a thousandth of the font size.
SLACK = 0.25


def one(runs: list[Run], text: str) -> Run:
    [run] = [run for run in runs if run.text == text]
    return run


def row(runs: list[Run], first: str) -> list[Run]:
    """The runs on the baseline of the first run starting with `first`, left to right."""
    baseline = next(run for run in runs if run.text.startswith(first)).baseline
    return sorted((run for run in runs if abs(run.baseline - baseline) < 0.5), key=lambda r: r.left)


def texts(runs: list[Run]) -> list[str]:
    return [run.text for run in runs]


def assert_ends_at(run: Run, edge: float):
    assert abs(run.right - edge) < SLACK, f"{run.text!r} ends at {run.right:.2f}, not {edge:.2f}"


def assert_apart(runs: list[Run]):
    for run, after in itertools.pairwise(runs):
        assert run.right < after.left, f"{run.text!r} runs into {after.text!r}"


def assert_totals(runs: list[Run], edge: float, rows: list[tuple[str, str]]):
    """Each totals row shows its one amount, ending at the amount column's edge, clear of its
    label."""
    for label, shown in rows:
        totals_row = row(runs, label)
        assert texts(totals_row[1:]) == [shown]
        assert_ends_at(totals_row[1], edge)
        assert_apart(totals_row)


# The tables but the totals have a fixed layout, which renders about twice as fast as the
# automatic one: a column no longer widens for what it holds, so the widest realistic amounts must
# fit the widths the stylesheet sets. A right-aligned amount too wide for its column loses its
# alignment: it starts at the column's left edge and runs into the next column or the page
# margin. So the widest amount in each column must end where a short one does.


def test_the_largest_amounts_fit_their_invoice_columns():
    credit = 1_234_567_890
    invoice = issued_invoice(
        lines=[
            plan_line("Enterprise plan (annual)", 1_234_567_890),
            overage_line(quantity=1_000_000, unit_amount=1),
        ],
        status=Invoice.Status.PAID,
        paid_at=local(2026, 12, 1, 0, 6),
        credit_applied=credit,
        amount_paid=1_519_748_505 - credit,
    )
    BalanceEntry.objects.create(
        organisation=invoice.organisation,
        currency="EUR",
        kind=BalanceEntry.Kind.APPLIED,
        amount=-credit,
        invoice=invoice,
        description="Credit applied (CN-2026-000001)",
        created_at=invoice.issued_at,
    )

    [runs] = text_runs(invoice_pdf_bytes(invoice=invoice))

    plan, overage = row(runs, "Enterprise plan"), row(runs, "Transaction overage")
    assert texts(plan[1:]) == ["1", "€12,345,678.90", "€12,345,678.90"]
    assert texts(overage[1:]) == ["1,000,000", "€0.01", "€10,000.00"]
    assert_ends_at(overage[1], plan[1].right)
    assert_ends_at(plan[2], overage[2].right)
    assert_ends_at(plan[3], overage[3].right)
    assert_apart(plan)
    assert_apart(overage)
    edge = overage[3].right
    # The amounts end where the page's content does, as the page number.
    assert_ends_at(one(runs, "Page 1 of 1"), edge)
    assert_totals(
        runs,
        edge,
        [
            ("Subtotal", "€12,355,678.90"),
            ("VAT 23%", "€2,841,806.15"),
            ("Total", "€15,197,485.05"),
            ("Credit applied", "-€12,345,678.90"),
            ("Amount paid", "€2,851,806.15"),
            ("Amount due", "€0.00"),
        ],
    )
    # The summary, above the lines, shows the total in large type.
    summary = next(run for run in runs if run.text == "€15,197,485.05")
    assert_ends_at(summary, one(runs, "paid 1 Dec 2026").right)
    assert_apart([one(runs, "Professional plan, monthly"), summary])


def test_the_largest_amounts_fit_their_credit_note_columns():
    invoice = issued_invoice(lines=[plan_line("Enterprise plan (annual)", 1_234_567_890)])
    credit_note = CreditNote.objects.create(
        organisation=invoice.organisation,
        invoice=invoice,
        number="CN-2026-000900",
        reason=CreditNote.Reason.WRONG_AMOUNT,
        outcome=CreditNote.Outcome.REDUCE_DUE,
        currency="EUR",
        subtotal=1_234_567_990,
        tax_amount=1_234_567_890,
        total=2_469_135_880,
        issued_at=local(2026, 12, 5),
    )
    for position, (description, amount, tax) in enumerate(
        [("Enterprise plan (annual)", 1_234_567_890, 1_234_567_890), ("Setup fee", 100, 0)], 1
    ):
        CreditNoteLine.objects.create(
            credit_note=credit_note,
            position=position,
            description=description,
            amount=amount,
            tax_amount=tax,
        )

    [runs] = text_runs(credit_note_pdf_bytes(credit_note=credit_note))

    plan, setup = row(runs, "Enterprise plan"), row(runs, "Setup fee")
    assert texts(plan[1:]) == ["€12,345,678.90", "€12,345,678.90", "€24,691,357.80"]
    assert texts(setup[1:]) == ["€1.00", "€0.00", "€1.00"]
    for widest, short in zip(plan[1:], setup[1:], strict=True):
        assert_ends_at(widest, short.right)
    assert_apart(plan)
    edge = setup[3].right
    assert_ends_at(one(runs, "Page 1 of 1"), edge)
    assert_totals(
        runs,
        edge,
        [
            ("Subtotal credited", "€12,345,679.90"),
            ("VAT 23%", "€12,345,678.90"),
            ("Total credited", "€24,691,358.80"),
        ],
    )
    summary = next(run for run in runs if run.text == "€24,691,358.80")
    assert_ends_at(summary, one(runs, "credited").right)
    assert_apart([one(runs, f"Credit of invoice {invoice.number}"), summary])


@pytest.mark.parametrize(
    ("rate_bp", "shown"), [(2300, "23%"), (2550, "25.5%"), (825, "8.25%"), (2000, "20%"), (0, "0%")]
)
def test_tax_rate_display(rate_bp, shown):
    assert tax_rate_display(rate_bp) == shown
