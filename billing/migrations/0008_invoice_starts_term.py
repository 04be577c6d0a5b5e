from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_ledger_and_reconciliation")]

    operations = [
        migrations.AddField(
            model_name="invoice",
            name="starts_term",
            field=models.BooleanField(default=False),
        ),
        # Invoices issued before the field: the first period invoice of each subscription,
        # and any issued exactly at its period start (a plan chosen again after an end).
        migrations.RunSQL(
            """
            UPDATE billing_invoice SET starts_term = true
            WHERE kind = 'subscription' AND status <> 'void' AND (
                issued_at = period_start OR id IN (
                    SELECT DISTINCT ON (subscription_id) id FROM billing_invoice
                    WHERE kind = 'subscription' AND status <> 'void'
                    ORDER BY subscription_id, period_start, id
                )
            )
            """,
            migrations.RunSQL.noop,
        ),
    ]
