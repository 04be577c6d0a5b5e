"""SAML single sign-on per organisation (docs/sso.md; article section 10)."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Membership, Organisation


class SsoConfiguration(models.Model):
    """One organisation's Identity Provider and how strictly it is used.

    The row exists from the first visit to Settings > SSO, so our SP details (entity id, ACS
    URL, metadata) are there before anything about the IdP is known. The IdP fields are what
    Save found in the metadata; `idp_certificates` keeps every signing certificate it lists
    (several during a rollover), each {"pem", "fingerprint", "not_before", "not_after",
    "subject"}.
    """

    class IdpType(models.TextChoices):
        AZURE_AD = "azure_ad", "Azure AD (Microsoft Entra ID)"
        OKTA = "okta", "Okta"
        GOOGLE = "google", "Google Workspace"
        CUSTOM = "custom", "Custom SAML"

    organisation = models.OneToOneField(
        Organisation, on_delete=models.CASCADE, related_name="sso_configuration"
    )
    idp_type = models.CharField(max_length=16, choices=IdpType.choices, default=IdpType.CUSTOM)
    metadata_url = models.CharField(max_length=1000, blank=True)
    metadata_xml = models.TextField(blank=True)
    idp_entity_id = models.CharField(max_length=1000, blank=True)
    idp_sso_url = models.CharField(max_length=1000, blank=True)
    idp_certificates = models.JSONField(default=list, blank=True)
    configured_at = models.DateTimeField(null=True, blank=True)
    metadata_refreshed_at = models.DateTimeField(null=True, blank=True)
    metadata_refresh_error = models.CharField(max_length=500, blank=True)
    # A successful test sign-in against the IdP as configured now; cleared when the IdP changes.
    tested_at = models.DateTimeField(null=True, blank=True)
    enforced = models.BooleanField("Enforce SSO for all users", default=False)
    enforced_at = models.DateTimeField(null=True, blank=True)
    backup_admin = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Keeps password sign-in while SSO is enforced.",
    )
    provision_users = models.BooleanField(
        "Create users on first sign-in",
        default=False,
        help_text="People from your domains without an invitation get an account at first "
        "SSO sign-in.",
    )
    provision_role = models.CharField(
        max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER
    )
    # Fingerprints of the certificates whose expiry the Admins were already emailed about.
    expiry_notified = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "SSO configuration"
        permissions = [
            ("switch_off_enforcement", "Can switch SSO enforcement off (lockout recovery)")
        ]

    def __str__(self):
        return f"SSO of {self.organisation}"

    @property
    def is_configured(self) -> bool:
        return bool(self.idp_entity_id and self.idp_sso_url and self.idp_certificates)


class SsoDomain(models.Model):
    """An email domain whose people sign in through the organisation's IdP. One owner each."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="sso_domains"
    )
    domain = models.CharField(max_length=253, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "SSO domain"
        ordering = ["domain"]

    def __str__(self):
        return self.domain


class SsoAttempt(models.Model):
    """One SAML response we received, what it said and what we decided, for diagnosis."""

    class Mode(models.TextChoices):
        SIGN_IN = "sign_in", "Sign-in"
        TEST = "test", "Test"

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Succeeded"
        FAILURE = "failure", "Failed"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="sso_attempts"
    )
    mode = models.CharField(max_length=16, choices=Mode.choices)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.CharField(max_length=500, blank=True)
    email = models.CharField(max_length=254, blank=True)
    name_id = models.CharField(max_length=500, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    # Set on success only: a second success with the same assertion is a replay.
    assertion_id = models.CharField(max_length=256, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "SSO attempt"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organisation", "-created_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "assertion_id"],
                condition=~Q(assertion_id=""),
                name="sso_attempt_assertion_used_once",
            )
        ]

    def __str__(self):
        return f"{self.organisation} {self.mode} {self.outcome} {self.created_at:%Y-%m-%d %H:%M}"


class SsoRequest(models.Model):
    """An AuthnRequest we sent, waiting for its answer.

    Bound to the browser that started it through the hash of a random `sso_state` cookie
    (SameSite=None: the IdP posts the answer from its own site, where the session cookie is
    not sent), and used once: the answer locks the row and sets `used_at`.
    """

    request_id = models.CharField(max_length=64, unique=True)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="sso_requests"
    )
    mode = models.CharField(max_length=16, choices=SsoAttempt.Mode.choices)
    browser_hash = models.CharField(max_length=64)
    next_url = models.CharField(max_length=500, blank=True)
    # The IdP configuration the request was made under: a test only counts for that one.
    configured_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.request_id} ({self.mode})"
