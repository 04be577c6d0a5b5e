from django.apps import AppConfig
from django.db.models.signals import post_migrate


class SupportConfig(AppConfig):
    name = "support"
    verbose_name = "Support"

    def ready(self):
        from support.staff import staff_groups_ensure

        # For every app, after its permissions are made (also on post_migrate): the groups
        # then hold the permissions of apps installed after this one too.
        post_migrate.connect(staff_groups_ensure, dispatch_uid="staff_groups")
