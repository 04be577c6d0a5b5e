"""Support tickets: "Contact billing support" (article section 13). The customer writes
in the portal, ops answer in Django admin; both sides see the same thread, and each reply is
also emailed."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Organisation
from billing.models import Invoice


class SupportTicket(models.Model):
    class Category(models.TextChoices):
        BILLING = "billing", "Billing"
        ACCOUNT_SUSPENDED = "account_suspended", "Billing: account suspended (urgent)"
        PAYMENT_FAILING = "payment_failing", "Billing: payment not processing (urgent)"
        TECHNICAL = "technical", "Technical"
        ACCOUNT = "account", "Account"
        OTHER = "other", "Other"

    class Status(models.TextChoices):
        OPEN = "open", "Waiting for support"
        ANSWERED = "answered", "Answered"
        CLOSED = "closed", "Closed"

    # The article's urgent billing issues: answered first.
    URGENT_CATEGORIES = frozenset({Category.ACCOUNT_SUSPENDED, Category.PAYMENT_FAILING})

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="support_tickets"
    )
    category = models.CharField(max_length=32, choices=Category.choices)
    subject = models.CharField(max_length=200)
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="support_tickets"
    )
    urgent = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # What the article asks to have ready, as it was when the ticket was written.
    contact_email = models.EmailField(max_length=254)
    organisation_name = models.CharField(max_length=100)
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        limit_choices_to={"is_staff": True},
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [
            models.Index(fields=["organisation", "-updated_at"]),
            models.Index(fields=["status", "urgent"]),
        ]
        permissions = [("reply_ticket", "Can reply to, assign and close support tickets")]

    def __str__(self):
        return f"{self.reference}: {self.subject}"

    @property
    def reference(self) -> str:
        return f"T-{self.pk:06d}" if self.pk else "T-new"


class TicketMessage(models.Model):
    class Author(models.TextChoices):
        CUSTOMER = "customer", "Customer"
        SUPPORT = "support", "Support"

    ticket = models.ForeignKey(SupportTicket, on_delete=models.CASCADE, related_name="messages")
    # Denormalised so tenant deletion and scoping work on this table alone.
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    author_kind = models.CharField(max_length=16, choices=Author.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    author_name = models.CharField(max_length=254, blank=True)
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.ticket.reference} {self.author_kind} {self.created_at:%Y-%m-%d %H:%M}"


class TicketAttachment(models.Model):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    message = models.ForeignKey(TicketMessage, on_delete=models.CASCADE, related_name="attachments")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    filename = models.CharField(max_length=200)
    content_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField()
    data = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.filename
