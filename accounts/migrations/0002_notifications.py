import uuid

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
    ]

    operations = [
        # Added nullable, filled, then made required: a callable default in AddField would
        # give every existing row the same uuid, grouping all old emails into one message.
        migrations.AddField(
            model_name="outgoingemail",
            name="message_id",
            field=models.UUIDField(null=True, editable=False),
        ),
        # Existing rows cannot be grouped reliably (each got its own timestamp), so each row
        # stays a message of its own. One statement: no per-row round trips on a big outbox.
        migrations.RunSQL(
            "UPDATE accounts_outgoingemail SET message_id = gen_random_uuid() "
            "WHERE message_id IS NULL",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="outgoingemail",
            name="message_id",
            field=models.UUIDField(db_index=True, default=uuid.uuid4, editable=False),
        ),
        migrations.AddField(
            model_name="membership",
            name="notifications_seen_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
