from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self):
        # The customer balance's admin lives in its own module (ops adjust balances there);
        # Django admin's autodiscovery imports only billing.admin.
        from billing import admin_balance  # noqa: F401
