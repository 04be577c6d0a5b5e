"""Deletions of customer data and the requests for them (after a cancellation, and on
GDPR requests)."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organisation


class DeletionRecord(models.Model):
    """What a deletion removed and how much: retention purges, the deletion 30 days after a
    cancellation, GDPR requests. Kept after the data is gone (accounting and proof)."""

    class Kind(models.TextChoices):
        RETENTION = "retention", "Retention purge"
        CANCELLATION = "cancellation", "30 days after cancellation"
        GDPR_PERSON = "gdpr_person", "GDPR request: one person"
        GDPR_ORGANISATION = "gdpr_organisation", "GDPR request: the organisation"

    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept as text too: the organisation row itself may be anonymised later.
    organisation_label = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=24, choices=Kind.choices)
    # {"sync_info": 120000, "snapshots": 300, "process_flows": 4, ...}
    counts = models.JSONField(default=dict)
    detail = models.CharField(max_length=255, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["kind", "-created_at"])]

    def __str__(self):
        return f"{self.get_kind_display()} {self.organisation_label} {self.created_at:%Y-%m-%d}"


class DataDeletionRequest(models.Model):
    """Settings > Privacy > Data Deletion Request (article section 12), worked by ops."""

    class Scope(models.TextChoices):
        PERSON = "person", "One person's personal data"
        ORGANISATION = "organisation", "All of the organisation's data"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for review"
        APPROVED = "approved", "Approved, deletion running"
        REJECTED = "rejected", "Rejected"
        DONE = "done", "Deleted"

    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="deletion_requests"
    )
    scope = models.CharField(max_length=16, choices=Scope.choices)
    # The person whose data is deleted (scope "person"); their email is kept as text until done.
    subject_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    subject_email = models.CharField(max_length=254, blank=True)
    reason = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    record = models.ForeignKey(
        DeletionRecord, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        permissions = [("review_deletion_request", "Can approve or reject data deletion requests")]
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "scope", "subject_email"],
                condition=Q(status__in=["pending", "approved"]),
                name="deletion_request_one_open_per_subject",
            )
        ]
        ordering = ["-requested_at", "-id"]

    def __str__(self):
        return f"{self.organisation} {self.scope} {self.subject_email} ({self.status})"
