"""Contact billing support (article section 13): the billing email address, a ticket form and
the organisation's tickets with their replies."""

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_safe

from accounts.audit import Actor
from accounts.models import Membership
from accounts.tenancy import tenant_view
from core.errors import ServiceError
from core.forms import form_error
from support.forms import ReplyForm, TicketForm
from support.models import SupportTicket
from support.selectors import attachment_get, ticket_get, tickets_visible
from support.services import ticket_create, ticket_reply_customer

TICKETS_PER_PAGE = 20


# Support stays reachable when the subscription has ended or the account is suspended: that is
# when people need it most.
@tenant_view(allow_when_ended=True)
def tickets(request):
    membership = request.membership
    can_name_invoice = membership.role != Membership.Role.MEMBER
    category = request.GET.get("category")
    form = TicketForm(
        request.POST or None,
        request.FILES or None,
        can_name_invoice=can_name_invoice,
        initial={
            "category": category
            if category in SupportTicket.Category.values
            else SupportTicket.Category.BILLING,
            "contact_email": request.user.email,
        },
    )
    if request.method == "POST" and form.is_valid():
        try:
            ticket = ticket_create(
                organisation=request.organisation,
                membership=membership,
                actor=Actor.from_request(request),
                category=form.cleaned_data["category"],
                subject=form.cleaned_data["subject"],
                message=form.cleaned_data["message"],
                contact_email=form.cleaned_data["contact_email"],
                invoice_number=form.cleaned_data.get("invoice_number", ""),
                upload=form.cleaned_data.get("attachment"),
                now=timezone.now(),
            )
        except ServiceError as error:
            form_error(form, error)
        else:
            messages.success(
                request,
                f"Ticket {ticket.reference} sent"
                + (" and marked urgent" if ticket.urgent else "")
                + f". We answer here and by email to {ticket.contact_email}.",
            )
            return redirect(
                "support:ticket", org_slug=request.organisation.slug, ticket_id=ticket.public_id
            )
    page = Paginator(tickets_visible(membership=membership), TICKETS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "support/tickets.html",
        {
            "form": form,
            "page": page,
            "billing_email": settings.SUPPORT_BILLING_EMAIL,
        },
        status=400 if form.errors else 200,
    )


@tenant_view(allow_when_ended=True)
def ticket(request, ticket_id):
    ticket = ticket_get(membership=request.membership, public_id=ticket_id)
    form = ReplyForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            ticket_reply_customer(
                ticket=ticket,
                actor=Actor.from_request(request),
                message=form.cleaned_data["message"],
                upload=form.cleaned_data.get("attachment"),
                now=timezone.now(),
            )
        except ServiceError as error:
            form_error(form, error)
        else:
            messages.success(request, "Reply sent.")
            return redirect(
                "support:ticket", org_slug=request.organisation.slug, ticket_id=ticket.public_id
            )
    return render(
        request,
        "support/ticket.html",
        {"ticket": ticket, "form": form},
        status=400 if form.errors else 200,
    )


@tenant_view(allow_when_ended=True)
@require_safe
def attachment_download(request, attachment_id):
    attachment = attachment_get(membership=request.membership, public_id=attachment_id)
    response = HttpResponse(bytes(attachment.data), content_type=attachment.content_type)
    # Always a download: an uploaded file never renders in our origin.
    response["Content-Disposition"] = f'attachment; filename="{attachment.filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response
