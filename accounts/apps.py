from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and organisations"

    def ready(self):
        # Connects the sign-in notices to user_logged_in.
        from accounts import signin_notices  # noqa: F401
