from django import forms
from django.conf import settings

from billing.models import BillingProfile
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
