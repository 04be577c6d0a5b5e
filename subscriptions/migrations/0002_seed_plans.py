"""The default plan catalogue. Ops edit it afterwards in admin."""

from django.db import migrations

# code, name, rank, connections, flows, environments, transactions, support, retention, flags
PLANS = [
    ("standard", "Standard", 1, 3, 10, 1, 50_000, "standard", (30, 7), (False, True, False),
     "For a first integration between a few apps."),
    ("professional", "Professional", 2, 10, 50, 2, 250_000, "premium", (90, 30),
     (False, True, False), "For growing teams with production and test environments."),
    ("enterprise", "Enterprise", 3, 50, 250, 5, 2_000_000, "premium", (365, 90),
     (True, True, True), "SSO, long retention and purchase orders."),
]
# Annual prices are 17% below twelve monthly payments; overage per 1,000 transactions.
PRICES = {
    "standard": {"USD": (29900, 297800, 500), "EUR": (27900, 277900, 450), "GBP": (23900, 238000, 400)},
    "professional": {"USD": (79900, 795800, 400), "EUR": (74900, 746000, 360), "GBP": (64900, 646400, 320)},
    "enterprise": {"USD": (199900, 1991000, 250), "EUR": (189900, 1891400, 230), "GBP": (159900, 1592600, 200)},
}


def seed(apps, schema_editor):
    Plan = apps.get_model("subscriptions", "Plan")
    PlanPrice = apps.get_model("subscriptions", "PlanPrice")
    for code, name, rank, conns, flows, envs, tx, support, retention, flags, text in PLANS:
        plan, _ = Plan.objects.update_or_create(
            code=code,
            defaults={
                "name": name,
                "rank": rank,
                "description": text,
                "max_connections": conns,
                "max_process_flows": flows,
                "max_environments": envs,
                "monthly_transactions": tx,
                "support_tier": support,
                "sync_info_retention_days": retention[0],
                "snapshot_retention_days": retention[1],
                "allows_sso": flags[0],
                "allows_bank_transfer": flags[1],
                "allows_purchase_order": flags[2],
            },
        )
        for currency, (monthly, annual, overage) in PRICES[code].items():
            PlanPrice.objects.update_or_create(
                plan=plan,
                currency=currency,
                defaults={
                    "monthly_amount": monthly,
                    "annual_amount": annual,
                    "overage_per_1000": overage,
                },
            )


class Migration(migrations.Migration):
    dependencies = [("subscriptions", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
