from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and organisations"

    def ready(self):
        # Plugs the delivery task into accounts.emails (the service cannot import its task).
        from accounts import tasks  # noqa: F401
