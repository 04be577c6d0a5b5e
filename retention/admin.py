"""Ops review of GDPR data deletion requests (DESIGN.md section 2, Data retention).

Approve and Reject are admin actions calling the same services as everything else. Rejecting
needs a note the requester reads, so Reject shows an intermediate page asking for it (the
request rows themselves stay read-only: their status only changes through the services).
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.utils import timezone

from accounts.audit import Actor, client_ip
from billing_portal.admin import ReadOnlyModelAdmin
from billing_portal.errors import ServiceError
from retention.gdpr import deletion_request_approve, deletion_request_reject
from retention.models import DataDeletionRequest, DeletionRecord


class ReviewNoteForm(forms.Form):
    review_note = forms.CharField(
        label="Note to the requester",
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        max_length=2000,
    )


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

    @admin.action(description="Approve (runs the deletion; cannot be undone)")
    def approve(self, request, queryset):
        actor = Actor(user=request.user, ip_address=client_ip(request))
        for deletion_request in queryset.select_related("organisation"):
            try:
                deletion_request_approve(
                    request=deletion_request, reviewer=actor, note="", now=timezone.now()
                )
            except ServiceError as error:
                self.message_user(
                    request, f"{deletion_request}: {error.message}", level=messages.ERROR
                )
            else:
                self.message_user(request, f"{deletion_request}: approved; deletion queued.")

    @admin.action(description="Reject (asks for a note to the requester)")
    def reject(self, request, queryset):
        form = ReviewNoteForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            actor = Actor(user=request.user, ip_address=client_ip(request))
            for deletion_request in queryset.select_related("organisation"):
                try:
                    deletion_request_reject(
                        request=deletion_request,
                        reviewer=actor,
                        note=form.cleaned_data["review_note"],
                        now=timezone.now(),
                    )
                except ServiceError as error:
                    self.message_user(
                        request, f"{deletion_request}: {error.message}", level=messages.ERROR
                    )
                else:
                    self.message_user(request, f"{deletion_request}: rejected.")
            return None
        return TemplateResponse(
            request,
            "retention/admin_reject_deletion_requests.html",
            {
                **self.admin_site.each_context(request),
                "title": "Reject data deletion requests",
                "opts": self.model._meta,
                "queryset": queryset,
                "form": form,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )


@admin.register(DeletionRecord)
class DeletionRecordAdmin(ReadOnlyModelAdmin):
    list_display = ("created_at", "kind", "organisation_label", "detail", "counts", "actor")
    list_filter = ("kind",)
    search_fields = ("organisation_label", "detail")
    list_select_related = ("actor",)
    date_hierarchy = "created_at"

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff


from retention import admin_export  # noqa: E402,F401
