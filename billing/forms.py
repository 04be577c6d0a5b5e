import re
from datetime import datetime
from zoneinfo import ZoneInfo

from django import forms
from django.conf import settings

from billing.models import BillingProfile, Invoice
from billing.selectors import HistoryFilters
from billing.tax import tax_number_clean
from subscriptions.models import BillingCycle, Plan


def _public_plans():
    return Plan.objects.filter(is_public=True).order_by("rank")


class PlanChoiceForm(forms.Form):
    """Choosing a plan. Plans are picked by code from the public catalogue: a tampered value is
    refused by the choice validation before anything happens."""

    plan = forms.ChoiceField(label="Plan")
    billing_cycle = forms.ChoiceField(
        label="Billing cycle", choices=BillingCycle.choices, initial=BillingCycle.MONTHLY
    )
    currency = forms.ChoiceField(label="Currency")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plans = list(_public_plans().prefetch_related("prices"))
        self.fields["plan"].choices = [(plan.code, plan.name) for plan in self.plans]
        self.fields["currency"].choices = [(code, code) for code in settings.CURRENCIES]

    def clean(self):
        cleaned = super().clean()
        plan = next((p for p in self.plans if p.code == cleaned.get("plan")), None)
        if plan is not None and cleaned.get("currency") and not plan.price_for(cleaned["currency"]):
            self.add_error(
                "currency", f"The {plan.name} plan is not offered in {cleaned['currency']}."
            )
        cleaned["plan_object"] = plan
        return cleaned


class CheckoutForm(PlanChoiceForm):
    setup_intent_id = forms.CharField(required=False, widget=forms.HiddenInput)
    use_card_on_file = forms.BooleanField(required=False, widget=forms.HiddenInput)


class CardForm(forms.Form):
    setup_intent_id = forms.CharField(widget=forms.HiddenInput)

    def clean_setup_intent_id(self):
        value = self.cleaned_data["setup_intent_id"].strip()
        if not value.startswith("seti_"):
            raise forms.ValidationError("The card was not confirmed. Please enter it again.")
        return value


class BillingInformationForm(forms.ModelForm):
    class Meta:
        model = BillingProfile
        fields = [
            "company_name",
            "address_line1",
            "address_line2",
            "city",
            "postal_code",
            "region",
            "country",
            "vat_number",
            "po_number",
        ]
        help_texts = {
            "vat_number": "Checked for the selected country. An EU business outside Ireland "
            "with a valid VAT number is invoiced without VAT (reverse charge).",
            "po_number": "Printed on invoices. Purchase orders are available on the Enterprise "
            "plan with annual billing.",
        }

    def __init__(self, *args, plan: Plan | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.fields["country"].required = True
        self.fields["company_name"].required = True

    def clean(self):
        cleaned = super().clean()
        country = cleaned.get("country")
        number = cleaned.get("vat_number", "")
        if number and country:
            try:
                cleaned["vat_number"] = tax_number_clean(country=str(country), number=number)
            except ValueError as error:
                self.add_error("vat_number", str(error))
        elif number and not country:
            self.add_error("vat_number", "Choose the country first, to check the number.")
        po_number = cleaned.get("po_number", "").strip()
        cleaned["po_number"] = po_number
        if po_number and not (self.plan and self.plan.allows_purchase_order):
            self.add_error(
                "po_number",
                "Purchase orders are available on the Enterprise plan with annual billing; "
                "your plan does not allow a PO number.",
            )
        return cleaned


# Invoice History's filters -------------------------------------------------------------------

CREDIT_NOTE_TYPE = "credit_note"
INVOICE_PREFIX, CREDIT_NOTE_PREFIX = "INV-", "CN-"
NUMBER_MAX_LENGTH = 32
NUMBER_HELP = "An INV-… or CN-… number, whole or its beginning."
WRONG_NUMBER = "Enter an invoice number (INV-…) or a credit note number (CN-…), or its beginning."
NO_SUCH_YEAR = "There are no invoices in that year; choose one from the list."
CREDIT_NOTE_NUMBER_NOT_INVOICE = (
    "CN-… numbers are credit notes: choose the type Credit note or All types to search them."
)
INVOICE_NUMBER_NOT_CREDIT_NOTE = (
    "INV-… numbers are invoices: choose an invoice type or All types to search them."
)
STATUS_NOT_FOR_CREDIT_NOTES = (
    "Status applies to invoices, so every credit note is shown whatever its invoice's status."
)


def _number_kind(number: str) -> str:
    """ "invoice" or "credit_note" for an upper-cased number or the beginning of one
    ("I", "INV-20", "C", "CN-2026-000001"), "" for anything else."""
    for kind, prefix in (("invoice", INVOICE_PREFIX), ("credit_note", CREDIT_NOTE_PREFIX)):
        if number.startswith(prefix) or prefix.startswith(number):
            return kind
    return ""


class InvoiceHistoryFilterForm(forms.Form):
    """Invoice History's filters: the year (in the organisation's zone, as the dates are
    shown), the invoice status, the type (an invoice kind, or credit notes as rows of their
    own) and a number or its beginning.

    The years offered are those the organisation has invoices in (given by the view), so a
    tampered year is an invalid choice, never a query over every year there is.
    """

    year = forms.TypedChoiceField(
        label="Year",
        required=False,
        coerce=int,
        empty_value=None,
        error_messages={"invalid_choice": NO_SUCH_YEAR},
    )
    status = forms.ChoiceField(
        label="Status",
        required=False,
        choices=[("", "All statuses"), *Invoice.Status.choices],
        error_messages={"invalid_choice": "Choose a status from the list."},
    )
    type = forms.ChoiceField(
        label="Type",
        required=False,
        choices=[("", "All types"), *Invoice.Kind.choices, (CREDIT_NOTE_TYPE, "Credit note")],
        error_messages={"invalid_choice": "Choose a type from the list."},
    )
    number = forms.CharField(label="Number", required=False, help_text=NUMBER_HELP)

    def __init__(self, *args, years: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["year"].choices = [("", "All years"), *((year, str(year)) for year in years)]
        self.notices: list[str] = []

    def clean_number(self) -> str:
        number = self.cleaned_data["number"].upper()
        if number and (
            len(number) > NUMBER_MAX_LENGTH
            or not re.fullmatch(r"[A-Z0-9-]+", number)
            or not _number_kind(number)
        ):
            raise forms.ValidationError(WRONG_NUMBER)
        return number

    def clean(self):
        cleaned = super().clean()
        number, kind = cleaned.get("number", ""), cleaned.get("type", "")
        if number and kind:
            searched = _number_kind(number)
            if searched == "credit_note" and kind != CREDIT_NOTE_TYPE:
                self.add_error("number", CREDIT_NOTE_NUMBER_NOT_INVOICE)
            elif searched == "invoice" and kind == CREDIT_NOTE_TYPE:
                self.add_error("number", INVOICE_NUMBER_NOT_CREDIT_NOTE)
        return cleaned

    @property
    def lists_credit_notes(self) -> bool:
        """Credit notes as rows of their own: the type Credit note, or a CN-… number."""
        cleaned = getattr(self, "cleaned_data", {})
        number = cleaned.get("number", "")
        return cleaned.get("type") == CREDIT_NOTE_TYPE or (
            bool(number) and _number_kind(number) == "credit_note"
        )

    def filters(self, zone: ZoneInfo) -> HistoryFilters:
        """The valid form's filters, the year as [start, end) instants in `zone`. A status with
        credit notes listed is left out, with a notice saying so."""
        if not self.is_bound:
            return HistoryFilters()
        cleaned = self.cleaned_data
        year, status = cleaned["year"], cleaned["status"]
        credit_notes = self.lists_credit_notes
        if credit_notes and status:
            self.notices.append(STATUS_NOT_FOR_CREDIT_NOTES)
            status = ""
        kind = cleaned["type"] if cleaned["type"] != CREDIT_NOTE_TYPE else ""
        return HistoryFilters(
            start=datetime(year, 1, 1, tzinfo=zone) if year else None,
            end=datetime(year + 1, 1, 1, tzinfo=zone) if year else None,
            status=status,
            kind=kind,
            credit_notes=credit_notes,
            number=cleaned["number"],
        )
