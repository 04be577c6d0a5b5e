import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organisation
from core.money import format_money, minimum_charge


class BillingCycle(models.TextChoices):
    MONTHLY = "monthly", "Monthly"
    ANNUAL = "annual", "Annual"


class PaymentMethodKind(models.TextChoices):
    CARD = "card", "Card"
    BANK_TRANSFER = "bank_transfer", "Bank transfer"
    PURCHASE_ORDER = "purchase_order", "Purchase order"


class Plan(models.Model):
    """A plan of the catalogue. Ops edit it in Django admin."""

    class SupportTier(models.TextChoices):
        STANDARD = "standard", "Standard support"
        PREMIUM = "premium", "Premium support"

    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=60)
    # Orders plans from smallest to largest: a higher rank is an upgrade.
    rank = models.PositiveSmallIntegerField(unique=True)
    description = models.CharField(max_length=200, blank=True)
    is_public = models.BooleanField(default=True, help_text="Offered when customers choose a plan.")
    max_connections = models.PositiveIntegerField("integrations (app connections)")
    max_process_flows = models.PositiveIntegerField("active ProcessFlows")
    max_environments = models.PositiveIntegerField("environments")
    monthly_transactions = models.PositiveBigIntegerField("transactions per month")
    support_tier = models.CharField(max_length=16, choices=SupportTier.choices)
    sync_info_retention_days = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    snapshot_retention_days = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    allows_sso = models.BooleanField("SSO", default=False)
    allows_bank_transfer = models.BooleanField(
        "bank transfer", default=False, help_text="On annual billing only."
    )
    allows_purchase_order = models.BooleanField(
        "purchase order", default=False, help_text="On annual billing only."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["rank"]

    def __str__(self):
        return self.name

    def price_for(self, currency: str) -> "PlanPrice | None":
        return next((p for p in self.prices.all() if p.currency == currency), None)

    def allows_payment_method(self, kind: str, cycle: str) -> bool:
        if kind == PaymentMethodKind.CARD:
            return True
        if cycle != BillingCycle.ANNUAL:
            return False
        if kind == PaymentMethodKind.BANK_TRANSFER:
            return self.allows_bank_transfer
        return kind == PaymentMethodKind.PURCHASE_ORDER and self.allows_purchase_order


class PlanPrice(models.Model):
    """A plan's prices in one currency, in minor units. Changes apply from each next renewal."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="prices")
    currency = models.CharField(max_length=3)
    monthly_amount = models.PositiveIntegerField()
    annual_amount = models.PositiveIntegerField()
    overage_per_1000 = models.PositiveIntegerField("overage per 1,000 transactions")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["plan", "currency"], name="plan_price_unique_currency")
        ]
        ordering = ["plan__rank", "currency"]

    def __str__(self):
        return f"{self.plan} {self.currency}"

    def clean(self):
        """Each price is at least the card processor's minimum charge, so every invoice (a
        period price, or one overage unit, plus tax) can be charged; an overage rate of 0 means
        no overage (docs/architecture.md#decision-amounts-below-the-minimum-charge-are-carried).
        """
        try:
            minimum = minimum_charge(self.currency or "")
        except ValueError as error:
            raise ValidationError({"currency": str(error)}) from None
        low = {
            field: f"Under the minimum card charge in {self.currency} "
            f"({format_money(minimum, self.currency)})."
            for field in ("monthly_amount", "annual_amount", "overage_per_1000")
            if getattr(self, field) is not None
            and getattr(self, field) < minimum
            and not (field == "overage_per_1000" and getattr(self, field) == 0)
        }
        if low:
            raise ValidationError(low)

    def amount_for(self, cycle: str) -> int:
        return self.annual_amount if cycle == BillingCycle.ANNUAL else self.monthly_amount

    @property
    def annual_discount_percent(self) -> float:
        twelve = self.monthly_amount * 12
        return round(100 * (twelve - self.annual_amount) / twelve, 1) if twelve else 0.0


class CancellationReason(models.TextChoices):
    TOO_EXPENSIVE = "too_expensive", "It is too expensive"
    MISSING_FEATURES = "missing_features", "It lacks features we need"
    SWITCHING = "switching", "We are switching to another product"
    NOT_USING = "not_using", "We do not use it enough"
    TECHNICAL_ISSUES = "technical_issues", "Technical problems"
    PROJECT_ENDED = "project_ended", "Our integration project ended"
    OTHER = "other", "Another reason"


class Subscription(models.Model):
    """An organisation's subscription. Status changes only through subscriptions.states."""

    class Status(models.TextChoices):
        INCOMPLETE = "incomplete", "Waiting for first payment"
        ACTIVE = "active", "Active"
        PAST_DUE = "past_due", "Past due"
        GRACE = "grace", "Grace period"
        SUSPENDED = "suspended", "Suspended"
        ENDED = "ended", "Ended"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.OneToOneField(
        Organisation, on_delete=models.PROTECT, related_name="subscription"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    billing_cycle = models.CharField(max_length=16, choices=BillingCycle.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.INCOMPLETE)
    currency = models.CharField(max_length=3)
    payment_method_kind = models.CharField(
        max_length=16, choices=PaymentMethodKind.choices, default=PaymentMethodKind.CARD
    )
    # The period boundaries follow the anchor: the k-th period starts k months/years after it.
    anchor_at = models.DateTimeField()
    period_index = models.PositiveIntegerField(default=0)
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField(help_text="The renewal date.")
    # The plan price of the current period (what its invoice charged), in minor units.
    current_price = models.PositiveIntegerField()
    # Set by ops (article section 7): the cycle to switch to at the next renewal.
    scheduled_billing_cycle = models.CharField(
        max_length=16, choices=BillingCycle.choices, blank=True
    )
    # Cancellation: no further invoice once cancelled; the service runs
    # until the current period ends, then the subscription ends. Undo is possible until then.
    cancel_at_period_end = models.BooleanField(default=False)
    canceled_at = models.DateTimeField(null=True, blank=True)
    cancellation_reason = models.CharField(
        max_length=32, choices=CancellationReason.choices, blank=True
    )
    cancellation_detail = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    activated_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    status_changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["status", "current_period_end"]),
            models.Index(
                fields=["current_period_end"],
                condition=Q(cancel_at_period_end=True),
                name="subscription_cancel_due",
            ),
        ]

    def __str__(self):
        return f"{self.organisation}: {self.plan} {self.billing_cycle} ({self.status})"

    @property
    def renewal_date(self):
        return self.current_period_end


class PlanChange(models.Model):
    """A change of plan: an upgrade (applied once its prorated invoice is paid) or a downgrade
    (scheduled for the renewal date). The rows are the subscription's plan-change history."""

    class Kind(models.TextChoices):
        UPGRADE = "upgrade", "Upgrade"
        DOWNGRADE = "downgrade", "Downgrade"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for payment"
        SCHEDULED = "scheduled", "Scheduled for renewal"
        APPLIED = "applied", "Applied"
        CANCELED = "canceled", "Cancelled"
        FAILED = "failed", "Payment failed"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="plan_changes"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices)
    from_plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    to_plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    billing_cycle = models.CharField(max_length=16, choices=BillingCycle.choices)
    # Downgrade: the renewal date it takes effect; upgrade: when it was applied.
    effective_at = models.DateTimeField(null=True, blank=True)
    # Downgrade: the ProcessFlows (public ids) the Admin chose to keep active.
    keep_flow_ids = models.JSONField(default=list, blank=True)
    # Upgrade: the quote shown before confirming, in minor units; the invoice equals it.
    quote_subtotal = models.BigIntegerField(null=True, blank=True)
    quote_tax = models.BigIntegerField(null=True, blank=True)
    quote_total = models.BigIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription"],
                condition=Q(status="scheduled"),
                name="plan_change_one_scheduled",
            ),
            models.UniqueConstraint(
                fields=["subscription"],
                condition=Q(status="pending"),
                name="plan_change_one_pending",
            ),
        ]
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.get_kind_display()} {self.from_plan} → {self.to_plan} ({self.status})"


class Environment(models.Model):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="environments"
    )
    name = models.CharField(max_length=80)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "name"], name="environment_unique_name")
        ]
        ordering = ["created_at", "id"]

    def __str__(self):
        return self.name


class Connection(models.Model):
    """An app connection (an "integration" in the plan limits)."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="connections"
    )
    environment = models.ForeignKey(
        Environment, on_delete=models.PROTECT, related_name="connections"
    )
    name = models.CharField(max_length=80)
    application = models.CharField(max_length=80, help_text="e.g. Salesforce, SAP Business One")
    # Non-secret settings only; credentials live with the integration runtime.
    config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "name"], name="connection_unique_name_per_environment"
            )
        ]
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.name} ({self.application})"


class ProcessFlow(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"

    class PauseReason(models.TextChoices):
        USER = "user", "Paused by a user"
        PLAN_LIMIT = "plan_limit", "Above the plan limit"
        SUSPENSION = "suspension", "Account suspended"
        CANCELLED = "cancelled", "Subscription cancelled"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="process_flows"
    )
    environment = models.ForeignKey(
        Environment, on_delete=models.PROTECT, related_name="process_flows"
    )
    name = models.CharField(max_length=120)
    source = models.ForeignKey(
        Connection, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    target = models.ForeignKey(
        Connection, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    config = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    pause_reason = models.CharField(max_length=16, choices=PauseReason.choices, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status="active", pause_reason="")
                | Q(status="paused") & ~Q(pause_reason=""),
                name="process_flow_pause_reason_iff_paused",
            )
        ]
        indexes = [models.Index(fields=["organisation", "status"])]
        ordering = ["created_at", "id"]

    def __str__(self):
        return self.name
