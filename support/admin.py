"""Ops work support tickets here: filter, assign, reply (shown in the portal and emailed),
close, and issue a revised copy of the invoice a ticket is about."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.audit import Actor
from billing.admin import issue_revised_copies
from billing.models import Invoice
from core.admin import ReadOnlyModelAdmin, permission_check, reason_asked
from core.errors import ServiceError
from core.http import client_ip
from support.models import SupportTicket, TicketAttachment, TicketMessage
from support.services import MESSAGE_MAX_CHARS, ticket_assign, ticket_close, ticket_reply_support


class SupportReplyForm(forms.Form):
    message = forms.CharField(
        label="Reply (shown in the portal and emailed to the customer)",
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80}),
        max_length=MESSAGE_MAX_CHARS,
    )
    close = forms.BooleanField(label="Close the ticket with this reply", required=False)


class TicketMessageInline(admin.StackedInline):
    model = TicketMessage
    extra = 0
    can_delete = False
    fields = ("author_kind", "author_name", "created_at", "body", "files")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Attachments")
    def files(self, obj):
        return (
            format_html_join(
                ", ",
                '<a href="{}">{}</a>',
                (
                    (reverse("admin:support_attachment", args=[a.public_id]), a.filename)
                    for a in obj.attachments.all()
                ),
            )
            or "—"
        )


class OpenFirst(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open_urgent", "Open and urgent"), ("unassigned", "Open, unassigned")]

    def queryset(self, request, queryset):
        open_ = queryset.exclude(status=SupportTicket.Status.CLOSED)
        if self.value() == "open_urgent":
            return open_.filter(urgent=True)
        if self.value() == "unassigned":
            return open_.filter(assigned_to__isnull=True)
        return queryset


@admin.register(SupportTicket)
class SupportTicketAdmin(ReadOnlyModelAdmin):
    list_display = (
        "reference",
        "organisation",
        "subject",
        "category",
        "urgent",
        "status",
        "assigned_to",
        "updated_at",
    )
    list_filter = (
        OpenFirst,
        "status",
        "category",
        "urgent",
        ("assigned_to", admin.RelatedOnlyFieldListFilter),
        ("organisation", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("id", "subject", "organisation__name", "organisation__slug", "contact_email")
    list_select_related = ("organisation", "assigned_to")
    date_hierarchy = "created_at"
    fields = (
        "reference",
        "organisation",
        "organisation_name",
        "contact_email",
        "category",
        "urgent",
        "status",
        "invoice",
        "assigned_to",
        "created_at",
        "updated_at",
        "closed_at",
        "reply_link",
    )
    readonly_fields = fields
    inlines = [TicketMessageInline]
    actions = ["assign_to_me", "close", "issue_revised_copy"]

    has_reply_permission = permission_check("support.reply_ticket")
    has_issue_revised_copy_permission = permission_check("billing.issue_revised_copy")

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff

    @admin.display(description="Ticket", ordering="id")
    def reference(self, obj):
        return obj.reference

    @admin.display(description="Reply")
    def reply_link(self, obj):
        if obj.status == SupportTicket.Status.CLOSED:
            return "Closed: no more replies."
        return format_html(
            '<a class="button" href="{}">Reply to the customer</a>',
            reverse("admin:support_ticket_reply", args=[obj.pk]),
        )

    def get_urls(self):
        return [
            path(
                "<int:ticket_pk>/reply/",
                self.admin_site.admin_view(self.reply_view),
                name="support_ticket_reply",
            ),
            path(
                "attachments/<uuid:attachment_id>/",
                self.admin_site.admin_view(self.attachment_view),
                name="support_attachment",
            ),
            *super().get_urls(),
        ]

    def reply_view(self, request, ticket_pk):
        if not self.has_reply_permission(request):
            raise PermissionDenied
        ticket = get_object_or_404(
            SupportTicket.objects.select_related("organisation"), pk=ticket_pk
        )
        form = SupportReplyForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                ticket_reply_support(
                    ticket=ticket,
                    actor=Actor(user=request.user, ip_address=client_ip(request)),
                    message=form.cleaned_data["message"],
                    close=form.cleaned_data["close"],
                    now=timezone.now(),
                )
            except ServiceError as error:
                form.add_error(None, error.message)
            else:
                self.message_user(request, f"Reply sent on {ticket.reference}.")
                return redirect("admin:support_supportticket_change", ticket.pk)
        return TemplateResponse(
            request,
            "support/admin_reply.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Reply to {ticket.reference}",
                "ticket": ticket,
                "thread": ticket.messages.all(),
                "form": form,
                "opts": self.model._meta,
            },
            status=400 if form.errors else 200,
        )

    def attachment_view(self, request, attachment_id):
        attachment = get_object_or_404(TicketAttachment, public_id=attachment_id)
        response = HttpResponse(bytes(attachment.data), content_type=attachment.content_type)
        response["Content-Disposition"] = f'attachment; filename="{attachment.filename}"'
        return response

    @admin.action(description="Assign to me", permissions=["reply"])
    def assign_to_me(self, request, queryset):
        for ticket in queryset:
            ticket_assign(ticket=ticket, assignee=request.user, now=timezone.now())
        self.message_user(request, f"{queryset.count()} ticket(s) assigned to you.")

    @admin.action(description="Close (emails the customer)", permissions=["reply"])
    def close(self, request, queryset):
        actor = Actor(user=request.user, ip_address=client_ip(request))
        closed = sum(ticket_close(ticket=t, actor=actor, now=timezone.now()) for t in queryset)
        self.message_user(request, f"{closed} ticket(s) closed.")

    @admin.action(
        description="Issue revised copy of the ticket's invoice",
        permissions=["issue_revised_copy"],
    )
    def issue_revised_copy(self, request, queryset):
        invoices = Invoice.objects.filter(
            pk__in=queryset.exclude(invoice__isnull=True).values("invoice_id")
        )
        if not invoices.exists():
            self.message_user(request, "None of these tickets names an invoice.", messages.ERROR)
            return None
        reason, page = reason_asked(
            self,
            request,
            queryset,
            action="issue_revised_copy",
            title="Issue revised copy",
            intro="Render a new PDF of the invoices these tickets are about, with the "
            "organisation's current billing details, marked Revised with today's date? "
            "The original PDFs do not change.",
        )
        if page is not None:
            return page
        issue_revised_copies(self, request, invoices, reason=reason)
        return None
