from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The kernel every app stands on; it imports no app (docs/architecture.md)."""

    name = "core"
    verbose_name = "Core"
