import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_countries.fields import CountryField

from accounts.models import Organisation
from subscriptions.models import BillingCycle, PaymentMethodKind, PlanChange, Subscription


class BillingProfile(models.Model):
    """Billing Information (article section 4): what future invoices show."""

    organisation = models.OneToOneField(
        Organisation, on_delete=models.CASCADE, related_name="billing_profile"
    )
    company_name = models.CharField(max_length=200, blank=True)
    address_line1 = models.CharField("address", max_length=200, blank=True)
    address_line2 = models.CharField("address (line 2)", max_length=200, blank=True)
    city = models.CharField(max_length=100, blank=True)
    postal_code = models.CharField(max_length=20, blank=True)
    region = models.CharField("state / region", max_length=100, blank=True)
    country = CountryField(blank=True)
    vat_number = models.CharField("VAT/GST number", max_length=32, blank=True)
    po_number = models.CharField("PO number", max_length=64, blank=True)
    stripe_customer_id = models.CharField(max_length=64, blank=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"Billing profile of {self.organisation}"

    def snapshot(self) -> dict:
        """The billing details as printed on an invoice issued now."""
        return {
            "company_name": self.company_name or self.organisation.name,
            "address_line1": self.address_line1,
            "address_line2": self.address_line2,
            "city": self.city,
            "postal_code": self.postal_code,
            "region": self.region,
            "country": self.country.code or "",
            "country_name": self.country.name if self.country else "",
            "vat_number": self.vat_number,
            "po_number": self.po_number,
            "email": self.organisation.primary_email,
        }


class TaxRate(models.Model):
    """A country's tax rate, kept by ops in admin (billing.tax)."""

    country = CountryField(unique=True)
    name = models.CharField(max_length=20, default="VAT", help_text="VAT, GST, sales tax …")
    # Basis points: 2300 is 23.00 %.
    rate_bp = models.PositiveIntegerField("rate (basis points)")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["country"]

    def __str__(self):
        return f"{self.country.code} {self.name} {self.rate_bp / 100:.2f}%"


class PaymentMethod(models.Model):
    """A card on file (Stripe PaymentMethod). Card numbers never reach our server."""

    class Status(models.TextChoices):
        ACTIVE = "active", "On file"
        REPLACED = "replaced", "Replaced"

    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="payment_methods"
    )
    stripe_payment_method_id = models.CharField(max_length=64, unique=True)
    brand = models.CharField(max_length=20)
    last4 = models.CharField(max_length=4)
    exp_month = models.PositiveSmallIntegerField()
    exp_year = models.PositiveSmallIntegerField()
    # The first instant after the expiry month (UTC): the card works until then.
    expires_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    replaced_at = models.DateTimeField(null=True, blank=True)
    expiry_reminder_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organisation"],
                condition=Q(status="active"),
                name="payment_method_one_active_per_organisation",
            )
        ]
        indexes = [models.Index(fields=["status", "expires_at"])]

    def __str__(self):
        return f"{self.get_brand_display()} •••• {self.last4}"

    BRAND_NAMES = {"visa": "Visa", "mastercard": "Mastercard", "amex": "American Express"}

    def get_brand_display(self) -> str:
        return self.BRAND_NAMES.get(self.brand, self.brand.title())


class InvoiceSequence(models.Model):
    """The last invoice number used in a year. Its row lock makes numbering gapless."""

    year = models.PositiveSmallIntegerField(primary_key=True)
    last_number = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"{self.year}: {self.last_number}"


class Invoice(models.Model):
    """An issued invoice: numbered, immutable, with a snapshot of the billing details."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        PAID = "paid", "Paid"
        VOID = "void", "Void"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"

    class Kind(models.TextChoices):
        SUBSCRIPTION = "subscription", "Subscription period"
        UPGRADE = "upgrade", "Plan upgrade"
        OVERAGE = "overage", "Transaction overage"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.PROTECT, related_name="invoices"
    )
    subscription = models.ForeignKey(
        Subscription, null=True, blank=True, on_delete=models.PROTECT, related_name="invoices"
    )
    # The upgrade this invoice charges (kind "upgrade").
    plan_change = models.OneToOneField(
        PlanChange, null=True, blank=True, on_delete=models.PROTECT, related_name="invoice"
    )
    number = models.CharField(max_length=32, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.SUBSCRIPTION)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    currency = models.CharField(max_length=3)
    subtotal = models.BigIntegerField()
    tax_amount = models.BigIntegerField()
    total = models.BigIntegerField()
    amount_paid = models.BigIntegerField(default=0)
    # Customer balance applied at issue, tax included (billing.balance): the "Credit applied
    # (CN-...)" lines below the tax; the total stays the invoice's value.
    credit_applied = models.BigIntegerField(default=0)
    # Credit notes issued against this invoice (billing.credit_notes), tax included, and the
    # part of them that reduced what was still owed (outcome "reduce the amount due").
    amount_credited = models.BigIntegerField(default=0)
    amount_credited_unpaid = models.BigIntegerField(default=0)
    # The tax rule applied, recorded so the invoice can be re-checked later.
    tax_rule = models.CharField(max_length=32)
    tax_rate_bp = models.PositiveIntegerField(default=0)
    tax_name = models.CharField(max_length=20, blank=True)
    tax_note = models.CharField(max_length=255, blank=True)
    plan_name = models.CharField(max_length=60)
    billing_cycle = models.CharField(max_length=16, choices=BillingCycle.choices)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    billing_details = models.JSONField()
    # The first period invoice of a subscription term (choosing a plan, or again after it ended).
    starts_term = models.BooleanField(default=False)
    payment_method_kind = models.CharField(max_length=16, choices=PaymentMethodKind.choices)
    issued_at = models.DateTimeField()
    due_at = models.DateTimeField()
    paid_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # Ops actions on money, granted to billing staff (support.staff sets up the groups).
        permissions = [
            ("record_payment", "Can record a bank transfer or PO payment"),
            ("write_off", "Can mark an invoice uncollectible"),
            ("issue_revised_copy", "Can issue a revised copy of an invoice"),
            ("issue_credit_note", "Can issue a credit note or refund"),
            ("export_finance", "Can download the finance export"),
        ]
        constraints = [
            # One invoice per subscription period, whatever retries or races happen.
            models.UniqueConstraint(
                fields=["subscription", "period_start"],
                condition=Q(kind="subscription"),
                name="invoice_one_per_subscription_period",
            ),
            models.CheckConstraint(
                condition=Q(total=models.F("subtotal") + models.F("tax_amount")),
                name="invoice_total_is_subtotal_plus_tax",
            ),
        ]
        indexes = [
            models.Index(fields=["organisation", "-issued_at"]),
            models.Index(fields=["status", "payment_method_kind", "due_at"]),
        ]

    def __str__(self):
        return self.number

    @property
    def amount_due(self) -> int:
        """What is still owed: the total less the balance applied, the money paid and the
        credit notes that reduced it."""
        return max(
            self.total - self.credit_applied - self.amount_paid - self.amount_credited_unpaid, 0
        )

    @property
    def amount_uncredited(self) -> int:
        """What credit notes may still credit."""
        return self.total - self.amount_credited


def amount_due_sql() -> models.Expression:
    """Invoice.amount_due in SQL, for sums over open invoices."""
    return (
        models.F("total")
        - models.F("credit_applied")
        - models.F("amount_paid")
        - models.F("amount_credited_unpaid")
    )


class InvoiceLine(models.Model):
    class Kind(models.TextChoices):
        PLAN = "plan", "Plan"
        PRORATION = "proration", "Proration"
        OVERAGE = "overage", "Overage"

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=255)
    quantity = models.PositiveBigIntegerField(default=1)
    unit_amount = models.BigIntegerField()
    amount = models.BigIntegerField()
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="invoice_line_position")
        ]
        ordering = ["invoice", "position"]

    def __str__(self):
        return self.description


class OverageCharge(models.Model):
    """A usage month's overage, billed once (billing.invoicing).

    Monthly plans: a line of the renewal invoice issued when the month closes; annual plans: an
    overage-only invoice at the close of each usage month over the limit. The unique (subscription,
    month_start) row is what makes a month billed at most once, whatever runs twice.
    """

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    subscription = models.ForeignKey(
        Subscription, on_delete=models.PROTECT, related_name="overage_charges"
    )
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="overage_charges")
    month_start = models.DateTimeField()
    month_end = models.DateTimeField()
    transactions = models.BigIntegerField()
    transaction_limit = models.BigIntegerField()
    units = models.PositiveBigIntegerField(help_text="Started thousands above the limit.")
    unit_amount = models.BigIntegerField(help_text="Price per 1,000, minor units.")
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "month_start"], name="overage_charge_once_per_month"
            )
        ]

    def __str__(self):
        return (
            f"{self.subscription_id} {self.month_start:%Y-%m-%d}: {self.units} × {self.unit_amount}"
        )


class CarriedCharge(models.Model):
    """An amount under the processor's minimum charge, billed as a line of the subscription's
    next period invoice instead of on its own
    (docs/architecture.md#decision-amounts-below-the-minimum-charge-are-carried).

    An upgrade carries its stored quote subtotal (one row per PlanChange); the tax is that of
    the invoice that bills it. Owed while `line` and `waived_at` are empty; the renewal that
    bills it sets `line` in its own transaction, so it is billed exactly once, whatever runs
    twice; a subscription that ends first waives it (`waived_at`).
    """

    class Kind(models.TextChoices):
        UPGRADE = "upgrade", "Upgrade"

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    subscription = models.ForeignKey(
        Subscription, on_delete=models.PROTECT, related_name="carried_charges"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    plan_change = models.OneToOneField(
        PlanChange, null=True, blank=True, on_delete=models.PROTECT, related_name="carried_charge"
    )
    description = models.CharField(max_length=255)
    amount = models.BigIntegerField(help_text="Before tax, minor units.")
    currency = models.CharField(max_length=3)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    line = models.OneToOneField(
        InvoiceLine,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="carried_charge",
        help_text="The invoice line that billed it; empty while owed.",
    )
    # The subscription ended before a renewal billed it: cancelling stops every further
    # invoice, and the amount is below what a card can be charged on its own.
    waived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return self.description


class InvoiceDocument(models.Model):
    """A rendered PDF of an invoice: the original at issue, and revised copies (never edited)."""

    class Kind(models.TextChoices):
        ORIGINAL = "original", "Original"
        REVISED = "revised", "Revised copy"

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="documents")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.ORIGINAL)
    pdf = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["invoice"],
                condition=Q(kind="original"),
                name="invoice_document_one_original",
            )
        ]

    def __str__(self):
        return f"{self.invoice} ({self.kind})"


class Payment(models.Model):
    """One attempt to collect an invoice: a card charge, or a payment ops recorded."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        # The bank asked the customer to authenticate (3-D Secure): the PaymentIntent waits
        # for them on Confirm payment; it is confirmed again, never replaced (billing.payments).
        REQUIRES_ACTION = "requires_action", "Needs authentication"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        # A lost dispute took the money back (billing.disputes): the invoice owes it again.
        CHARGED_BACK = "charged_back", "Charged back"

    organisation = models.ForeignKey(
        Organisation, on_delete=models.PROTECT, related_name="payments"
    )
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payments")
    method_kind = models.CharField(max_length=16, choices=PaymentMethodKind.choices)
    payment_method = models.ForeignKey(
        PaymentMethod, null=True, blank=True, on_delete=models.PROTECT, related_name="payments"
    )
    attempt = models.PositiveSmallIntegerField()
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # Sent to Stripe with the charge; derived from our own row so a retry never charges twice.
    idempotency_key = models.CharField(max_length=80, unique=True)
    processor_id = models.CharField(max_length=64, blank=True)
    failure_code = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=255, blank=True)
    reference = models.CharField(max_length=120, blank=True, help_text="Bank or PO reference.")
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    # When the bank first asked the customer to authenticate this charge (3-D Secure); kept
    # once the payment ends, so ops can see how often it happens and how it ends.
    authentication_requested_at = models.DateTimeField(null=True, blank=True)
    # The cardholder disputed the charge with their bank (billing.disputes).
    disputed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["invoice", "attempt"], name="payment_attempt_unique"),
            models.UniqueConstraint(
                fields=["invoice"],
                condition=Q(status="succeeded"),
                name="payment_one_success_per_invoice",
            ),
        ]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self):
        return f"{self.invoice} attempt {self.attempt} ({self.status})"


class DunningCase(models.Model):
    """The failed-payment schedule of a subscription (billing.dunning).

    Opened at the first failure of an invoice (day 0; for bank transfer and purchase order, the
    day an invoice passes its due date); its steps run on days 3, 7 and 14 counted from then.
    Closed when every open invoice is paid (resolved) or by ops.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RESOLVED = "resolved", "Paid up"
        CLOSED = "closed", "Closed"

    organisation = models.ForeignKey(
        Organisation, on_delete=models.PROTECT, related_name="dunning_cases"
    )
    subscription = models.ForeignKey(
        Subscription, on_delete=models.PROTECT, related_name="dunning_cases"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    started_at = models.DateTimeField(help_text="Day 0: the first failure.")
    # Ops may push suspension back (admin action "extend grace period").
    grace_extension_days = models.PositiveSmallIntegerField(default=0)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        permissions = [("extend_grace", "Can extend a grace period")]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription"],
                condition=Q(status="open"),
                name="dunning_one_open_case_per_subscription",
            )
        ]
        indexes = [models.Index(fields=["status", "started_at"])]

    def __str__(self):
        return f"Dunning of {self.organisation} from {self.started_at:%Y-%m-%d} ({self.status})"


class DunningStep(models.Model):
    """One step of a dunning case, recorded once: the unique (case, step) makes it run once."""

    class Step(models.TextChoices):
        DAY_0 = "day_0", "Day 0: payment failed"
        DAY_3 = "day_3", "Day 3: second attempt"
        DAY_7 = "day_7", "Day 7: final attempt"
        DAY_14 = "day_14", "Day 14: suspension"

    case = models.ForeignKey(DunningCase, on_delete=models.CASCADE, related_name="steps")
    step = models.CharField(max_length=16, choices=Step.choices)
    ran_at = models.DateTimeField()
    # Charge attempts made by this step (0 for bank transfer / purchase order or day 14).
    attempts = models.PositiveSmallIntegerField(default=0)
    succeeded = models.BooleanField(default=False)
    result = models.CharField(max_length=255, blank=True, help_text="Processor result.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["case", "step"], name="dunning_step_once")]
        ordering = ["case", "ran_at"]

    def __str__(self):
        return f"{self.case_id} {self.step} ({'paid' if self.succeeded else self.result})"


class StripeEvent(models.Model):
    """A webhook event from Stripe, stored once by its id: a redelivery changes nothing."""

    event_id = models.CharField(max_length=80, unique=True)
    type = models.CharField(max_length=80)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=255, blank=True)

    class Meta:
        indexes = [models.Index(fields=["type", "received_at"])]

    def __str__(self):
        return f"{self.type} {self.event_id}"


class LedgerViolation(models.Model):
    """A money invariant that does not hold (billing.ledger), as the nightly check found it.

    One open row per (rule, subject): a rerun that finds it again only moves last_seen_at; once
    the check no longer reports it, it is closed (resolved_at) and a later recurrence opens a
    new row.
    """

    rule = models.CharField(max_length=64)
    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # What the violation is about, stable across runs: "invoice:INV-2026-000101", ...
    subject = models.CharField(max_length=200)
    message = models.TextField()
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "subject"],
                condition=Q(resolved_at__isnull=True),
                name="ledger_violation_one_open",
            )
        ]
        indexes = [models.Index(fields=["organisation", "resolved_at"])]

    def __str__(self):
        return f"{self.rule}: {self.subject}"


class ReconciliationDifference(models.Model):
    """A payment on which we and the processor (Stripe) disagree (billing.reconciliation)."""

    class Kind(models.TextChoices):
        # Stripe has a succeeded charge we have not recorded as paid (e.g. after a timeout).
        MISSING_HERE = "missing_here", "Charged at Stripe, not recorded here"
        # We recorded a card payment as succeeded; Stripe has no succeeded charge for it.
        MISSING_AT_PROCESSOR = "missing_at_processor", "Recorded here, not charged at Stripe"
        # Both have it, with different amounts or currencies.
        AMOUNT_MISMATCH = "amount_mismatch", "Amounts differ"
        # A refund made at Stripe that no credit note here can record (it exceeds what the
        # invoice has left to credit, or its payment is not ours).
        REFUND_UNMATCHED = "refund_unmatched", "Refunded at Stripe, no credit note here"
        # A second successful charge for an invoice already settled: refund it.
        DOUBLE_CHARGE = "double_charge", "Charged twice"

    class Resolution(models.TextChoices):
        PAYMENT_RECORDED = "payment_recorded", "Payment recorded here"
        MARKED_FAILED = "marked_failed", "Our payment marked failed"
        REFUNDED = "refunded", "Charge refunded (credit note)"
        NO_ACTION = "no_action", "Checked, no change needed"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    payment = models.ForeignKey(
        Payment, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    processor_id = models.CharField(max_length=255, blank=True)
    # The two sides, side by side in admin: amount, currency, status, ids, dates.
    ours = models.JSONField(default=dict, blank=True)
    theirs = models.JSONField(default=dict, blank=True)
    found_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=32, choices=Resolution.choices, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-found_at", "-id"]
        permissions = [("resolve_difference", "Can resolve a reconciliation difference")]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "processor_id", "payment"],
                condition=Q(resolved_at__isnull=True),
                name="reconciliation_one_open_difference",
                nulls_distinct=False,
            )
        ]

    def __str__(self):
        return f"{self.get_kind_display()}: {self.processor_id or self.payment_id}"


class CreditNoteSequence(models.Model):
    """The last credit-note number used in a year; its row lock makes numbering gapless."""

    year = models.PositiveSmallIntegerField(primary_key=True)
    last_number = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"{self.year}: {self.last_number}"


class CreditNote(models.Model):
    """A correction of an issued invoice, which itself never changes (billing.credit_notes):
    numbered CN-YYYY-NNNNNN, with the lines and tax it credits and what happened to the money.
    """

    class Reason(models.TextChoices):
        DUPLICATE = "duplicate", "Duplicate charge"
        WRONG_AMOUNT = "wrong_amount", "Wrong amount"
        SERVICE_ISSUE = "service_issue", "Service issue"
        GOODWILL = "goodwill", "Goodwill"
        CANCELLED_ORDER = "cancelled_order", "Cancelled order"
        OTHER = "other", "Other"
        # Made by ops in the Stripe dashboard, recorded here by the webhook or reconciliation.
        REFUNDED_IN_STRIPE = "refunded_in_stripe", "Refunded in Stripe"

    class Outcome(models.TextChoices):
        REFUND = "refund", "Refund to the card"
        BALANCE = "balance", "Credit to the customer balance"
        REFUNDED_OUTSIDE = "refunded_outside", "Refunded outside (bank transfer or PO)"
        REDUCE_DUE = "reduce_due", "Reduce the amount due"
        REFUNDED_IN_STRIPE = "refunded_in_stripe", "Refunded in Stripe"

    class Status(models.TextChoices):
        ISSUED = "issued", "Issued"
        # A refund Stripe has not confirmed yet: the charge job retries it with the same key.
        REFUND_PENDING = "refund_pending", "Refund pending"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.PROTECT, related_name="credit_notes"
    )
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    number = models.CharField(max_length=32, unique=True)
    reason = models.CharField(max_length=32, choices=Reason.choices)
    note = models.CharField(max_length=500, blank=True)
    outcome = models.CharField(max_length=32, choices=Outcome.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ISSUED)
    currency = models.CharField(max_length=3)
    subtotal = models.BigIntegerField()
    tax_amount = models.BigIntegerField()
    total = models.BigIntegerField()
    # A bank-transfer or PO refund's reference, or the Stripe refund's id.
    reference = models.CharField(max_length=120, blank=True)
    issued_at = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Rendered once at issue, never changed (billing.pdf).
    pdf = models.BinaryField(null=True, blank=True)

    class Meta:
        ordering = ["issued_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(total=models.F("subtotal") + models.F("tax_amount")),
                name="credit_note_total_is_subtotal_plus_tax",
            ),
            models.CheckConstraint(condition=Q(total__gt=0), name="credit_note_total_positive"),
        ]
        indexes = [models.Index(fields=["organisation", "-issued_at"])]

    def __str__(self):
        return self.number


class CreditNoteLine(models.Model):
    """What a credit note credits of one invoice line, before and of tax. A refund of a second
    charge for an invoice already paid credits no line (`invoice_line` empty)."""

    credit_note = models.ForeignKey(CreditNote, on_delete=models.PROTECT, related_name="lines")
    position = models.PositiveSmallIntegerField()
    invoice_line = models.ForeignKey(
        InvoiceLine, null=True, blank=True, on_delete=models.PROTECT, related_name="credits"
    )
    description = models.CharField(max_length=255)
    amount = models.BigIntegerField(help_text="Before tax, minor units.")
    tax_amount = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["credit_note", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["credit_note", "position"], name="credit_note_line_position"
            )
        ]

    def __str__(self):
        return self.description


class Refund(models.Model):
    """Money given back to a card through Stripe: by a credit note (ours, with an idempotency
    key from this row, committed before Stripe is called) or found at Stripe (made in its
    dashboard). Its Stripe id is unique, so a refund is recorded once."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    credit_note = models.ForeignKey(CreditNote, on_delete=models.PROTECT, related_name="refunds")
    # The payment refunded; empty for a second charge we never recorded as a payment.
    payment = models.ForeignKey(
        Payment, null=True, blank=True, on_delete=models.PROTECT, related_name="refunds"
    )
    payment_intent_id = models.CharField(max_length=64)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    idempotency_key = models.CharField(max_length=80, unique=True)
    processor_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    failure_message = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self):
        return f"{self.credit_note} refund ({self.status})"


class BalanceEntry(models.Model):
    """One movement of an organisation's customer balance in one currency (billing.balance).

    Credits (a credit note to the balance, an ops adjustment up) are positive and keep what is
    left of them in `remaining`; uses (applied to an invoice, an ops adjustment down) are
    negative and name the credit they draw on (`source`), oldest first. A use given back (its
    invoice voided) is a positive "returned" entry naming the same credit, whose `remaining`
    grows again. The balance is the sum of `remaining`, which never goes below zero, and equals
    the sum of every entry's `amount`.
    """

    class Kind(models.TextChoices):
        CREDIT_NOTE = "credit_note", "Credit note"
        APPLIED = "applied", "Applied to an invoice"
        ADJUSTMENT = "adjustment", "Adjustment by our team"
        RETURNED = "returned", "Returned from a void invoice"

    organisation = models.ForeignKey(
        Organisation, on_delete=models.PROTECT, related_name="balance_entries"
    )
    currency = models.CharField(max_length=3)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.BigIntegerField()
    remaining = models.BigIntegerField(default=0)
    source = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="uses"
    )
    credit_note = models.ForeignKey(
        CreditNote, null=True, blank=True, on_delete=models.PROTECT, related_name="balance_entries"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="balance_entries"
    )
    description = models.CharField(max_length=255)
    reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "balance entries"
        permissions = [("adjust_balance", "Can adjust a customer balance")]
        constraints = [
            models.CheckConstraint(
                condition=Q(remaining__gte=0) & Q(remaining__lte=models.F("amount"))
                | Q(amount__lt=0, remaining=0),
                name="balance_entry_remaining_within_credit",
            ),
            models.CheckConstraint(condition=~Q(amount=0), name="balance_entry_not_zero"),
        ]
        indexes = [
            models.Index(
                fields=["organisation", "currency"],
                condition=Q(remaining__gt=0),
                name="balance_entry_open_credit",
            )
        ]

    def __str__(self):
        return self.description


class Dispute(models.Model):
    """A chargeback: the cardholder disputed a charge with their bank (billing.disputes).

    One row per Stripe dispute, updated from its webhooks in the order Stripe made them
    (`event_created`); a closed dispute (won or lost) never reopens.
    """

    class Status(models.TextChoices):
        WARNING_NEEDS_RESPONSE = "warning_needs_response", "Inquiry: needs response"
        WARNING_UNDER_REVIEW = "warning_under_review", "Inquiry: under review"
        WARNING_CLOSED = "warning_closed", "Inquiry closed"
        NEEDS_RESPONSE = "needs_response", "Needs response"
        UNDER_REVIEW = "under_review", "Under review"
        WON = "won", "Won"
        LOST = "lost", "Lost"

    CLOSED = frozenset({Status.WON, Status.LOST, Status.WARNING_CLOSED})

    processor_id = models.CharField(max_length=64, unique=True)
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="disputes")
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="disputes")
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=32, choices=Status.choices)
    opened_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    # The `created` of the latest event applied: an older one arriving late changes nothing.
    event_created = models.DateTimeField()
    # A lost dispute reopened the invoice (once).
    lost_applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        indexes = [models.Index(fields=["status"])]

    def __str__(self):
        return f"Dispute {self.processor_id} ({self.status})"
