"""Ops review of GDPR data deletion requests.

Approve and Reject are admin actions calling the same services as everything else. Rejecting
needs a note the requester reads, so Reject shows an intermediate page asking for it (the
request rows themselves stay read-only: their status only changes through the services).
"""

from django.contrib import admin, messages
from django.utils import timezone

from accounts.audit import Actor
from core.admin import ReadOnlyModelAdmin, permission_check, reason_asked
from core.errors import ServiceError
from core.http import client_ip
from retention.gdpr_review import deletion_request_approve, deletion_request_reject
from retention.models import DataDeletionRequest, DeletionRecord


@admin.register(DataDeletionRequest)
class DataDeletionRequestAdmin(ReadOnlyModelAdmin):
    list_display = (
        "organisation",
        "scope",
        "subject_email",
        "status",
        "requested_by",
        "requested_at",
        "reviewed_by",
        "completed_at",
    )
    list_filter = ("status", "scope")
    search_fields = ("organisation__name", "organisation__slug", "subject_email")
    list_select_related = ("organisation", "requested_by", "reviewed_by")
    date_hierarchy = "requested_at"
    actions = ["approve", "reject"]

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff

    has_review_permission = permission_check("retention.review_deletion_request")

    @admin.action(
        description="Approve (runs the deletion; cannot be undone)", permissions=["review"]
    )
    def approve(self, request, queryset):
        reason, page = reason_asked(
            self,
            request,
            queryset,
            action="approve",
            title="Approve data deletion requests",
            intro="Approve these requests? The deletion runs at once and cannot be undone; "
            "the requester is told by email.",
            label="Reason (kept in the audit log and shown to the requester)",
        )
        if page is not None:
            return page
        actor = Actor(user=request.user, ip_address=client_ip(request))
        for deletion_request in queryset.select_related("organisation"):
            try:
                deletion_request_approve(
                    request=deletion_request, reviewer=actor, note=reason, now=timezone.now()
                )
            except ServiceError as error:
                self.message_user(
                    request, f"{deletion_request}: {error.message}", level=messages.ERROR
                )
            else:
                self.message_user(request, f"{deletion_request}: approved; deletion queued.")
        return None

    @admin.action(description="Reject (asks for a note to the requester)", permissions=["review"])
    def reject(self, request, queryset):
        note, page = reason_asked(
            self,
            request,
            queryset,
            action="reject",
            title="Reject data deletion requests",
            intro="Reject these data deletion requests? Nothing is deleted; the requester "
            "receives your note by email.",
            label="Note to the requester",
        )
        if page is not None:
            return page
        actor = Actor(user=request.user, ip_address=client_ip(request))
        for deletion_request in queryset.select_related("organisation"):
            try:
                deletion_request_reject(
                    request=deletion_request, reviewer=actor, note=note, now=timezone.now()
                )
            except ServiceError as error:
                self.message_user(
                    request, f"{deletion_request}: {error.message}", level=messages.ERROR
                )
            else:
                self.message_user(request, f"{deletion_request}: rejected.")
        return None


@admin.register(DeletionRecord)
class DeletionRecordAdmin(ReadOnlyModelAdmin):
    list_display = ("created_at", "kind", "organisation_label", "detail", "counts", "actor")
    list_filter = ("kind",)
    search_fields = ("organisation_label", "detail")
    list_select_related = ("actor",)
    date_hierarchy = "created_at"

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff
