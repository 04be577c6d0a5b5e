"""Billing recipients: up to five extra addresses (an accounts-payable mailbox, say) that get
the billing emails, each once it has confirmed them by an emailed link.

The rules (docs/architecture.md#decision-billing-recipients):
- Admins and Billing contacts add them; an address that is already a user of the organisation,
  the primary email or a recipient already is refused, and so is a sixth one (under the
  organisation row lock, so two tabs cannot make six).
- The link confirms without signing in (the mailbox holder usually has no account); it works
  once, for 7 days; Resend sends a new one (the old one stops working), at most every 10
  minutes.
- A confirmed address is in `accounts.selectors.billing_recipients`; it never gets account
  emails and never any access.
- Removing stops it at once: what is still queued for it is withheld (accounts.delivery).

Every add, confirmation, resend and removal writes the audit log.
"""

from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.audit import Actor, audit_record
from accounts.emails import email_send
from accounts.models import BillingRecipient, Membership, Organisation, OutgoingEmail, User
from accounts.services import LinkError, organisation_lock
from accounts.tokens import new_token, token_digest
from core.errors import ServiceError
from core.links import absolute_url

MAX_BILLING_RECIPIENTS = 5
CONFIRM_VALID_DAYS = 7
RESEND_AFTER = timedelta(minutes=10)
CONFIRM_TEMPLATE = "billing_recipient_confirm"


def _day(moment: datetime, organisation: Organisation) -> str:
    return f"{timezone.localtime(moment, organisation.tzinfo):%-d %b %Y}"


def _clean_email(email: str) -> str:
    email = User.objects.normalize_email((email or "").strip()).lower()
    if not email:
        raise ServiceError("Enter an email address.", field="email")
    try:
        validate_email(email)
    except ValidationError:
        raise ServiceError(
            "Enter a valid email address, such as ap@example.com.", field="email"
        ) from None
    return email


def _refusal_for(organisation: Organisation, email: str) -> str | None:
    """Why `email` cannot be added, or None. Called under the organisation row lock."""
    if email == organisation.primary_email.lower():
        return (
            f"{email} is the primary email of {organisation.name}: it already gets every "
            "billing email."
        )
    membership = (
        Membership.objects.filter(organisation=organisation, user__email__iexact=email)
        .only("role", "status")
        .first()
    )
    if membership is not None:
        if membership.status != Membership.Status.ACTIVE:
            return (
                f"{email} belongs to a deactivated user of {organisation.name}. Billing "
                "recipients are for addresses without an account here."
            )
        if membership.role in (Membership.Role.ADMIN, Membership.Role.BILLING):
            return (
                f"{email} is a user of {organisation.name} ({membership.get_role_display()}) "
                "and already gets every billing email."
            )
        return (
            f"{email} is a user of {organisation.name}. Billing recipients are for addresses "
            "without an account here; an Admin can make that user a Billing contact instead."
        )
    existing = (
        BillingRecipient.objects.filter(organisation=organisation, removed_at__isnull=True)
        .alias(address=Lower("email"))
        .filter(address=email)
        .first()
    )
    if existing is not None:
        if existing.confirmed_at is not None:
            return f"{email} is already a billing recipient (confirmed)."
        return (
            f"{email} is already a billing recipient, waiting for confirmation. Use Resend "
            "confirmation if the email did not arrive."
        )
    return None


def _send_confirmation(recipient: BillingRecipient, token: str, *, actor: Actor) -> None:
    email_send(
        template=CONFIRM_TEMPLATE,
        to=recipient.email,
        context={
            "recipient": recipient,
            "added_by": actor.email,
            "confirm_url": absolute_url("accounts:billing_recipient_confirm", token),
            "valid_days": CONFIRM_VALID_DAYS,
        },
        organisation=recipient.organisation,
    )


def billing_recipient_add(
    *, organisation: Organisation, actor: Actor, email: str, now: datetime
) -> BillingRecipient:
    """Add an extra address for the billing emails and send it the confirmation link; it gets
    nothing else until it is confirmed."""
    email = _clean_email(email)
    with transaction.atomic():
        organisation = organisation_lock(organisation)
        refusal = _refusal_for(organisation, email)
        if refusal:
            raise ServiceError(refusal, field="email")
        live = BillingRecipient.objects.filter(
            organisation=organisation, removed_at__isnull=True
        ).count()
        if live >= MAX_BILLING_RECIPIENTS:
            raise ServiceError(
                f"{organisation.name} already has {MAX_BILLING_RECIPIENTS} billing recipients, "
                "the most it may have. Remove one to add another.",
                field="email",
            )
        token, digest = new_token()
        recipient = BillingRecipient.objects.create(
            organisation=organisation,
            email=email,
            token_hash=digest,
            created_by=actor.user,
            created_at=now,
            expires_at=now + timedelta(days=CONFIRM_VALID_DAYS),
            last_sent_at=now,
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="billing_recipient.added",
            target=recipient,
            target_label=email,
            changes={"status": {"old": None, "new": "pending confirmation"}},
            now=now,
        )
        _send_confirmation(recipient, token, actor=actor)
    return recipient


def _lock(recipient: BillingRecipient) -> BillingRecipient:
    return (
        BillingRecipient.objects.select_for_update(of=("self",))
        .select_related("organisation")
        .get(pk=recipient.pk)
    )


def billing_recipient_resend(
    *, recipient: BillingRecipient, actor: Actor, now: datetime
) -> BillingRecipient:
    """Send a new confirmation link, valid 7 more days; the previous link stops working.
    At most one every 10 minutes per address: it is someone else's mailbox."""
    with transaction.atomic():
        recipient = _lock(recipient)
        organisation = recipient.organisation
        if recipient.removed_at is not None:
            raise ServiceError(f"{recipient.email} was removed; add it again to send a link.")
        if recipient.confirmed_at is not None:
            raise ServiceError(
                f"{recipient.email} is already confirmed (on "
                f"{_day(recipient.confirmed_at, organisation)}); there is nothing to resend."
            )
        if recipient.last_sent_at > now - RESEND_AFTER:
            again = timezone.localtime(recipient.last_sent_at + RESEND_AFTER, organisation.tzinfo)
            raise ServiceError(
                f"A confirmation email was sent to {recipient.email} less than 10 minutes ago. "
                f"Check that mailbox (and its spam folder); you can resend from {again:%H:%M}."
            )
        token, digest = new_token()
        recipient.token_hash = digest
        recipient.expires_at = now + timedelta(days=CONFIRM_VALID_DAYS)
        recipient.sent_count += 1
        recipient.last_sent_at = now
        recipient.save(update_fields=["token_hash", "expires_at", "sent_count", "last_sent_at"])
        audit_record(
            organisation=organisation,
            actor=actor,
            action="billing_recipient.confirmation_resent",
            target=recipient,
            target_label=recipient.email,
            now=now,
        )
        _send_confirmation(recipient, token, actor=actor)
    return recipient


def billing_recipient_remove(
    *, recipient: BillingRecipient, actor: Actor, now: datetime
) -> BillingRecipient:
    """Stop sending to the address at once: it leaves `billing_recipients`, its link stops
    working, and the emails queued for it and not yet delivered are withheld."""
    with transaction.atomic():
        recipient = _lock(recipient)
        if recipient.removed_at is not None:
            raise ServiceError(f"{recipient.email} was already removed.")
        old_status = recipient.status_label.lower()
        recipient.removed_at = now
        recipient.removed_by = actor.user
        recipient.save(update_fields=["removed_at", "removed_by"])
        # Waits for a delivery that holds its row, so an email is either sent or withheld.
        OutgoingEmail.objects.filter(
            billing_recipient=recipient,
            status__in=[OutgoingEmail.Status.QUEUED, OutgoingEmail.Status.FAILED],
        ).update(status=OutgoingEmail.Status.WITHHELD)
        audit_record(
            organisation=recipient.organisation,
            actor=actor,
            action="billing_recipient.removed",
            target=recipient,
            target_label=recipient.email,
            changes={"status": {"old": old_status, "new": "removed"}},
            now=now,
        )
    return recipient


def _valid_link(recipient: BillingRecipient | None, *, now: datetime) -> BillingRecipient:
    if recipient is None or recipient.organisation.status != Organisation.Status.ACTIVE:
        raise ServiceError(
            "This confirmation link is not valid. If a newer confirmation email was sent, use "
            "the link in that one.",
            code=LinkError.INVALID,
        )
    organisation = recipient.organisation
    if recipient.removed_at is not None:
        raise ServiceError(
            f"{recipient.email} was removed from the billing recipients of {organisation.name} "
            f"on {_day(recipient.removed_at, organisation)}, so this link no longer works. "
            "Nothing was changed.",
            code=LinkError.REVOKED,
        )
    if recipient.confirmed_at is not None:
        raise ServiceError(
            f"This link has already been used: {recipient.email} was confirmed on "
            f"{_day(recipient.confirmed_at, organisation)} and receives the billing emails of "
            f"{organisation.name}. Nothing else to do.",
            code=LinkError.USED,
        )
    if recipient.expires_at <= now:
        raise ServiceError(
            f"This confirmation link expired on {_day(recipient.expires_at, organisation)}. "
            f"Ask your contact at {organisation.name} to resend it (Settings > Billing > "
            "Billing recipients). Nothing was changed.",
            code=LinkError.EXPIRED,
        )
    return recipient


def billing_recipient_check(*, token: str, now: datetime) -> BillingRecipient:
    """The pending billing recipient behind a confirmation link, or a ServiceError saying why
    not."""
    recipient = (
        BillingRecipient.objects.select_related("organisation")
        .filter(token_hash=token_digest(token))
        .first()
    )
    return _valid_link(recipient, now=now)


def billing_recipient_confirm(
    *, token: str, ip_address: str | None, now: datetime
) -> BillingRecipient:
    """Confirm the address behind the link: from now on it gets the billing emails. Single
    use; whoever opened the link has the mailbox, so the audit log names the address."""
    with transaction.atomic():
        recipient = (
            BillingRecipient.objects.select_for_update(of=("self",))
            .select_related("organisation")
            .filter(token_hash=token_digest(token))
            .first()
        )
        recipient = _valid_link(recipient, now=now)
        recipient.confirmed_at = now
        recipient.save(update_fields=["confirmed_at"])
        audit_record(
            organisation=recipient.organisation,
            actor=Actor(user=None, ip_address=ip_address, label=recipient.email),
            action="billing_recipient.confirmed",
            target=recipient,
            target_label=recipient.email,
            changes={"status": {"old": "pending confirmation", "new": "confirmed"}},
            now=now,
        )
    return recipient
