"""Tax rules (docs/architecture.md#billing), the rates kept in admin, and tax-number validation
with python-stdnum."""

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from stdnum.exceptions import ValidationError as StdnumError
from stdnum.util import get_cc_module

from billing.models import TaxRate
from core.money import round_half_up

# fmt: off
EU_MEMBER_STATES = frozenset({
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU",
    "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
})
# fmt: on
# Greece writes its VAT numbers with EL.
VAT_PREFIX = {"GR": "EL"}
REVERSE_CHARGE_NOTE = (
    "Reverse charge: VAT to be accounted for by the recipient "
    "(Article 196, Council Directive 2006/112/EC)."
)


@dataclass(frozen=True)
class TaxDecision:
    rule: str  # "standard", "reverse_charge" or "none"
    rate_bp: int
    name: str
    note: str = ""

    def amount(self, subtotal: int) -> int:
        return round_half_up(Decimal(subtotal) * self.rate_bp / 10_000)


def tax_decide(
    *, country: str, vat_number: str, seller_country: str, rates: dict[str, tuple[str, int]]
) -> TaxDecision:
    """The tax on an invoice to a customer in `country`.

    An EU business with a (validated) VAT number of another EU country than the seller's pays no
    VAT: reverse charge, with the legal mention. Otherwise the customer country's rate kept in
    admin applies, or none when there is none. Without a billing country, the seller's own
    country's rate applies until the customer fills in Billing Information.
    """
    country = (country or seller_country).upper()
    if (
        vat_number
        and country in EU_MEMBER_STATES
        and seller_country in EU_MEMBER_STATES
        and country != seller_country
    ):
        return TaxDecision(rule="reverse_charge", rate_bp=0, name="VAT", note=REVERSE_CHARGE_NOTE)
    if country in rates:
        name, rate_bp = rates[country]
        return TaxDecision(rule="standard", rate_bp=rate_bp, name=name)
    return TaxDecision(rule="none", rate_bp=0, name="Tax")


def tax_rates() -> dict[str, tuple[str, int]]:
    return {rate.country.code: (rate.name, rate.rate_bp) for rate in TaxRate.objects.all()}


def tax_for(*, details: dict, rates: dict[str, tuple[str, int]] | None = None) -> TaxDecision:
    return tax_decide(
        country=details.get("country", ""),
        vat_number=details.get("vat_number", ""),
        seller_country=settings.SELLER["country"],
        rates=tax_rates() if rates is None else rates,
    )


def tax_number_clean(*, country: str, number: str) -> str:
    """A VAT/GST number in its standard form, or ValueError with a message for the form.

    EU numbers carry their country prefix (added when missing) and must belong to `country`;
    numbers of countries python-stdnum has a module for are checked by it; others are kept as
    entered (trimmed), since they cannot be checked here.
    """
    country = country.upper()
    raw = "".join(number.split()).upper()
    if not raw:
        return ""
    if country in EU_MEMBER_STATES:
        prefix = VAT_PREFIX.get(country, country)
        if raw[:2].isalpha() and raw[:2] != prefix:
            raise ValueError(
                f"This VAT number is not a {country} number (it starts with {raw[:2]})."
            )
        if not raw.startswith(prefix):
            raw = prefix + raw
        module = get_cc_module("eu", "vat")
    else:
        module = get_cc_module(country.lower(), "vat")
        if module is None:
            return raw
    try:
        return module.validate(raw)
    except StdnumError:
        raise ValueError(f"This is not a valid VAT/GST number for {country}.") from None
