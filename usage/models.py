"""Transaction metering. Each Sync Info record is one transaction.

Sync Info rows live in `usage_syncinfo`, partitioned by retention tier and blocks of weeks (created
by migration SQL and usage.partitions; Django reads it through the unmanaged SyncInfo model),
so the retention purge can drop whole tables for every plan. Usage counters per
organisation, usage month and day are updated in the same transaction as each batch, so the
usage figure is exact and never needs a scan of Sync Info.
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organisation
from subscriptions.models import Environment, ProcessFlow


class ApiKey(models.Model):
    """A per-environment key for the integration runtime's machine API. Only a hash is kept."""

    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="api_keys"
    )
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=80)
    # The first characters, shown so people can tell keys apart; the rest is never stored.
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"


class IngestBatch(models.Model):
    """One accepted (or rejected) batch, by its idempotency key: a resend gets the same answer."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    idempotency_key = models.CharField(max_length=128)
    body_sha256 = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    record_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "idempotency_key"], name="ingest_batch_idempotency"
            )
        ]

    def __str__(self):
        return f"{self.environment_id}/{self.idempotency_key}"


class SyncInfo(models.Model):
    """One synced record (read-only model over the partitioned table `usage_syncinfo`)."""

    class Status(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILED = "failed", "Failed"

    class Direction(models.TextChoices):
        INBOUND = "inbound", "Inbound"
        OUTBOUND = "outbound", "Outbound"

    id = models.BigIntegerField(primary_key=True)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    environment = models.ForeignKey(
        Environment, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    flow = models.ForeignKey(
        ProcessFlow, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    batch_id = models.BigIntegerField()
    record_key = models.CharField(max_length=255)
    status = models.CharField(max_length=8, choices=Status.choices)
    direction = models.CharField(max_length=16, choices=Direction.choices)
    synced_at = models.DateTimeField()
    message = models.CharField(max_length=500, blank=True)
    has_snapshot = models.BooleanField(default=False)
    retention_days = models.PositiveSmallIntegerField(
        help_text="The organisation's Sync Info retention when the row was ingested: the "
        "partition tier the purge drops by."
    )

    class Meta:
        managed = False
        db_table = "usage_syncinfo"

    def __str__(self):
        return f"{self.record_key} ({self.status})"


class UsageCounter(models.Model):
    """Transactions of one organisation on one day of one usage month."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    month_start = models.DateTimeField(help_text="Start of the usage month.")
    day = models.DateField(help_text="The day, in the organisation's time zone.")
    transactions = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "month_start", "day"], name="usage_counter_unique_day"
            )
        ]

    def __str__(self):
        return f"{self.organisation_id} {self.day}: {self.transactions}"


class UsageAlert(models.Model):
    """A usage alert sent: once per organisation, usage month, kind and threshold (the row is
    claimed before the email goes out, docs/architecture.md#usage-alerts).

    A threshold alert says this month's transactions reached `threshold` percent of the limit
    (the fixed 80% and 100%, or one an Admin added). A forecast alert says the projection to the
    month's end reached 100% (`threshold` is 100 and `projected` what was projected).
    """

    class Kind(models.TextChoices):
        THRESHOLD = "threshold", "Threshold"
        FORECAST = "forecast", "Forecast"

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    month_start = models.DateTimeField()
    # The end of that usage month (exclusive): "above 80% now" is month_start <= now < month_end
    # in one query, whatever each organisation's anniversary and time zone.
    month_end = models.DateTimeField()
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.THRESHOLD)
    threshold = models.PositiveSmallIntegerField()
    sent_at = models.DateTimeField(default=timezone.now)
    transactions = models.BigIntegerField()
    projected = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "month_start", "kind", "threshold"],
                name="usage_alert_once",
            ),
            models.CheckConstraint(
                condition=Q(threshold__gte=10, threshold__lte=500), name="usage_alert_threshold"
            ),
            models.CheckConstraint(
                condition=Q(kind="threshold", projected__isnull=True)
                | Q(kind="forecast", threshold=100, projected__isnull=False),
                name="usage_alert_kind",
            ),
        ]

    def __str__(self):
        label = "forecast" if self.kind == self.Kind.FORECAST else f"{self.threshold}%"
        return f"{self.organisation_id} {self.month_start:%Y-%m} {label}"


class AlertThreshold(models.Model):
    """A usage alert an Admin added beside the fixed 80% and 100%: a whole percentage of the
    monthly limit from 10 to 500 (docs/architecture.md#usage-alerts)."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    percent = models.PositiveSmallIntegerField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["percent"]
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "percent"], name="usage_alert_threshold_once"
            ),
            # 80 and 100 are always on: they are never rows.
            models.CheckConstraint(
                condition=Q(percent__gte=10, percent__lte=500) & ~Q(percent__in=[80, 100]),
                name="usage_alert_threshold_percent",
            ),
        ]

    def __str__(self):
        return f"{self.organisation_id} {self.percent}%"


class AlertSettings(models.Model):
    """An organisation's usage-alert choices beyond the thresholds: the opt-in forecast alert."""

    organisation = models.OneToOneField(
        Organisation, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    forecast = models.BooleanField(
        default=False,
        help_text="Email when the projection to the usage month's end first reaches 100%.",
    )
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "alert settings"

    def __str__(self):
        return f"{self.organisation_id} forecast {'on' if self.forecast else 'off'}"
