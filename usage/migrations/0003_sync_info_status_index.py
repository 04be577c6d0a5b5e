"""Filtering Sync Info by status (the Sync Info page) without reading through other rows."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("usage", "0002_partitioned_sync_info")]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX usage_syncinfo_org_status_time "
            "ON usage_syncinfo (organisation_id, status, synced_at DESC, id DESC);",
            "DROP INDEX usage_syncinfo_org_status_time;",
        )
    ]
