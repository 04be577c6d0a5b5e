"""Reads for billing pages, always scoped to an organisation."""

from django.db.models import QuerySet
from django.http import Http404

from accounts.models import Membership, Organisation
from billing.models import BillingProfile, Invoice, PaymentMethod


def invoice_list(*, organisation: Organisation) -> QuerySet[Invoice]:
    return Invoice.objects.filter(organisation=organisation).order_by("-issued_at", "-id")


def invoice_get(*, organisation: Organisation, number: str) -> Invoice:
    invoice = (
        Invoice.objects.select_related("organisation")
        .filter(organisation=organisation, number=number)
        .first()
    )
    if invoice is None:
        raise Http404("No such invoice.")
    return invoice


def payment_method_current(*, organisation: Organisation) -> PaymentMethod | None:
    return PaymentMethod.objects.filter(
        organisation=organisation, status=PaymentMethod.Status.ACTIVE
    ).first()


def billing_profile_for(*, organisation: Organisation) -> BillingProfile:
    """The organisation's profile, or an unsaved blank one (nothing entered yet)."""
    profile = BillingProfile.objects.filter(organisation=organisation).first()
    return profile or BillingProfile(organisation=organisation)


def billing_recipients(*, organisation: Organisation) -> list[str]:
    """Who gets billing emails: active Admins and Billing contacts, and the primary email."""
    emails = Membership.objects.filter(
        organisation=organisation,
        status=Membership.Status.ACTIVE,
        role__in=[Membership.Role.ADMIN, Membership.Role.BILLING],
    ).values_list("user__email", flat=True)
    ordered = [organisation.primary_email, *sorted(emails)]
    return list(dict.fromkeys(email.lower() for email in ordered if email))
