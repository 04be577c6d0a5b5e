from django.apps import AppConfig


class RetentionConfig(AppConfig):
    name = "retention"

    def ready(self):
        # Plugs the deletion task into retention.gdpr (the service cannot import its task).
        from retention import tasks  # noqa: F401
