import uuid
import zoneinfo
from importlib import import_module

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.contrib.sessions.base_session import AbstractBaseSession
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.crypto import salted_hmac


def time_zone_choices() -> list[tuple[str, str]]:
    return [(name, name.replace("_", " ")) for name in sorted(zoneinfo.available_timezones())]


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create(self, email, password, **fields):
        if not email:
            raise ValueError("A user needs an email address.")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email, password=None, **fields):
        fields.setdefault("is_staff", False)
        fields.setdefault("is_superuser", False)
        return self._create(email, password, **fields)

    def create_superuser(self, email, password=None, **fields):
        fields["is_staff"] = True
        fields["is_superuser"] = True
        return self._create(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who signs in. Customer roles live on Membership; is_staff marks ops staff."""

    email = models.EmailField(max_length=254, unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(
        default=False, help_text="Ops staff: may sign in to Django admin."
    )
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)
    # Bumped to end every session of this user at once (see get_session_auth_hash).
    session_epoch = models.PositiveIntegerField(default=0, editable=False)

    objects = UserManager()

    EMAIL_FIELD = "email"
    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique")
        ]

    def __str__(self):
        return self.email

    def clean(self):
        super().clean()
        self.email = self.__class__.objects.normalize_email(self.email).lower()

    @property
    def display_name(self) -> str:
        return self.full_name or self.email

    def get_full_name(self) -> str:
        return self.full_name

    def get_short_name(self) -> str:
        return self.full_name.split(" ")[0] if self.full_name else self.email

    def get_session_auth_hash(self) -> str:
        # Django checks this hash on every request; including session_epoch lets us sign a user
        # out everywhere (Deactivate, Remove User) without tracking their session keys.
        return salted_hmac(
            "accounts.User.get_session_auth_hash",
            f"{self.password}:{self.session_epoch}",
            algorithm="sha256",
        ).hexdigest()


class Organisation(models.Model):
    """The tenant: a customer company. Every customer-owned row belongs to one."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DELETED = "deleted", "Deleted"

    class TwoFactorPolicy(models.TextChoices):
        # Who must have a second factor to use the organisation's pages
        # (accounts.two_factor_policy; docs/architecture.md#decision-two-factor-policy-gate).
        OFF = "off", "Not required"
        ADMINS_AND_BILLING = (
            "admins_and_billing",
            "Require two-factor sign-in for Admins and Billing contacts",
        )
        EVERYONE = "everyone", "Require two-factor sign-in for everyone"

    name = models.CharField(max_length=100)
    # Fixed at creation so links and bookmarks survive a rename.
    slug = models.SlugField(max_length=60, unique=True)
    primary_email = models.EmailField(max_length=254)
    time_zone = models.CharField(max_length=64, default="UTC")
    currency = models.CharField(max_length=3, default="USD")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    two_factor_policy = models.CharField(
        max_length=20, choices=TwoFactorPolicy.choices, default=TwoFactorPolicy.OFF
    )

    class Meta:
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self):
        return self.name

    @property
    def tzinfo(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)


class Membership(models.Model):
    """A user's place in an organisation, with one role."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        BILLING = "billing", "Billing contact"
        MEMBER = "member", "Member"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DEACTIVATED = "deactivated", "Deactivated"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    # When they last opened the Notifications page: emails after it are unread. Kept here, not
    # in a table of its own, so it goes with the membership (removal, GDPR, data deletion).
    notifications_seen_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "user"], name="accounts_membership_unique"
            )
        ]
        indexes = [models.Index(fields=["user", "status"])]

    def __str__(self):
        return f"{self.user} in {self.organisation} ({self.get_role_display()})"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Invitation(models.Model):
    """An emailed invitation to join with a role, valid 7 days (article section 9)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField(max_length=254)
    role = models.CharField(max_length=16, choices=Membership.Role.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # Only a SHA-256 of the emailed token is stored: a database leak reveals no usable link.
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    sent_count = models.PositiveIntegerField(default=1)
    last_sent_at = models.DateTimeField(default=timezone.now)
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                "organisation",
                Lower("email"),
                condition=Q(status="pending"),
                name="accounts_invitation_one_pending_per_email",
            )
        ]
        indexes = [models.Index(fields=["status", "expires_at"])]

    def __str__(self):
        return f"{self.email} → {self.organisation} ({self.status})"

    def is_expired_at(self, now) -> bool:
        return self.expires_at <= now


class PrimaryEmailChange(models.Model):
    """A request to change an organisation's primary email; it takes effect once verified."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for verification"
        VERIFIED = "verified", "Verified"
        SUPERSEDED = "superseded", "Replaced by a newer request"

    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="primary_email_changes"
    )
    old_email = models.EmailField(max_length=254)
    new_email = models.EmailField(max_length=254)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organisation"],
                condition=Q(status="pending"),
                name="accounts_primary_email_one_pending",
            )
        ]

    def __str__(self):
        return f"{self.organisation}: {self.old_email} → {self.new_email} ({self.status})"


class AuditEvent(models.Model):
    """One change made in Settings: who, what, old and new values, when, from which address."""

    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="audit_events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept as text too, so the entry still says who acted if the user row ever goes.
    actor_email = models.CharField(max_length=254, blank=True)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=254, blank=True)
    # {"field": {"old": ..., "new": ...}}
    changes = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["organisation", "-created_at"])]
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_email or 'system'} {self.action}"


class BillingRecipient(models.Model):
    """An extra address, such as an accounts-payable mailbox, that gets the billing emails once
    it has confirmed them by the emailed link. Never a user: no sign-in, no access, only the
    billing emails (docs/architecture.md#decision-billing-recipients). Removed rows are kept,
    marked `removed_at`, so the audit trail and the Notifications page still name them."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="billing_recipients"
    )
    email = models.EmailField(max_length=254)
    # Only a SHA-256 of the emailed token is stored: a database leak reveals no usable link.
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Until when the link of the last confirmation email works.
    expires_at = models.DateTimeField()
    sent_count = models.PositiveIntegerField(default=1)
    last_sent_at = models.DateTimeField(default=timezone.now)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    removed_at = models.DateTimeField(null=True, blank=True)
    removed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                "organisation",
                Lower("email"),
                condition=Q(removed_at__isnull=True),
                name="accounts_billing_recipient_one_live_per_email",
            )
        ]

    def __str__(self):
        return f"{self.email} ({self.status_label})"

    @property
    def is_confirmed(self) -> bool:
        return self.confirmed_at is not None and self.removed_at is None

    @property
    def status_label(self) -> str:
        if self.removed_at is not None:
            return "Removed"
        return "Confirmed" if self.confirmed_at is not None else "Pending confirmation"


class OutgoingEmail(models.Model):
    """Every email the portal sends, kept so the organisation can see what was sent."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        # Addressed to a billing recipient removed before it went out: never sent.
        WITHHELD = "withheld", "Withheld (recipient removed)"

    organisation = models.ForeignKey(
        Organisation,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="outgoing_emails",
    )
    # One per email_send call, shared by its recipients' rows: the Notifications page shows the
    # message once. Rows from before it existed each got their own (migration 0002).
    message_id = models.UUIDField(default=uuid.uuid4, editable=False, db_index=True)
    to_email = models.EmailField(max_length=254)
    # Set when `to_email` was a billing recipient (not a user) as the email was queued: if it
    # is removed before delivery, the email is withheld (accounts.delivery).
    billing_recipient = models.ForeignKey(
        BillingRecipient,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="emails",
    )
    template = models.CharField(max_length=100)
    subject = models.CharField(max_length=255)
    body_text = models.TextField()
    body_html = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["organisation", "-created_at"]),
            models.Index(fields=["status", "created_at"]),
        ]

    def __str__(self):
        return f"{self.template} → {self.to_email} ({self.status})"


class UserSession(AbstractBaseSession):
    """A Django database session with who it belongs to and where it was last used, so a user
    can see and end their sessions
    (docs/architecture.md#decision-session-records-and-sign-in-notices).
    Filled by accounts.session_store and accounts.middleware.SessionRecordMiddleware."""

    # Null while the session is anonymous (before sign-in).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    # For URLs and pages: the session key itself never leaves the cookie.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    # The session's copy of User.get_session_auth_hash(): a session whose hash no longer matches
    # (password changed, sessions ended) is dead and is not listed.
    auth_hash = models.CharField(max_length=128, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "expire_date"])]

    def __str__(self):
        return f"session {self.public_id}"

    @classmethod
    def get_session_store_class(cls):
        # The configured engine (accounts.session_store), looked up by name: that module
        # imports this one.
        return import_module(settings.SESSION_ENGINE).SessionStore


class KnownBrowser(models.Model):
    """A browser a user has signed in from, recognised by the random id of its signed
    `portal_browser` cookie. Only a hash of the id is kept, and the cookie carries no user data."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    browser_hash = models.CharField(max_length=64)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "browser_hash"], name="accounts_knownbrowser_user_browser_unique"
            )
        ]

    def __str__(self):
        return f"browser of user {self.user_id}"
