from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("usage", "0004_retention_tiers")]

    operations = [
        migrations.AddField(
            model_name="usagealert",
            name="month_end",
            field=models.DateTimeField(null=True),
        ),
        # Alerts written before the column: a calendar month from their start (an anniversary
        # month can end a day or two later; these rows only feed the ops dashboard).
        migrations.RunSQL(
            "UPDATE usage_usagealert SET month_end = month_start + interval '1 month' "
            "WHERE month_end IS NULL",
            migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="usagealert",
            name="month_end",
            field=models.DateTimeField(),
        ),
    ]
