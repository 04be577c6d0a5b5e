"""Standard tax rates for common customer countries; ops keep them current in admin."""

from django.db import migrations

RATES = {
    "AT": ("VAT", 2000), "BE": ("VAT", 2100), "DE": ("VAT", 1900), "DK": ("VAT", 2500),
    "ES": ("VAT", 2100), "FI": ("VAT", 2550), "FR": ("VAT", 2000), "IE": ("VAT", 2300),
    "IT": ("VAT", 2200), "NL": ("VAT", 2100), "PL": ("VAT", 2300), "PT": ("VAT", 2300),
    "SE": ("VAT", 2500), "GB": ("VAT", 2000), "IN": ("GST", 1800), "AU": ("GST", 1000),
}


def seed(apps, schema_editor):
    TaxRate = apps.get_model("billing", "TaxRate")
    for country, (name, rate_bp) in RATES.items():
        TaxRate.objects.update_or_create(country=country, defaults={"name": name, "rate_bp": rate_bp})


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
