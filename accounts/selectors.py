"""Reads, always scoped to an organisation (or to the signed-in user's own rows)."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from allauth.mfa.models import Authenticator
from django.db.models import Exists, F, Min, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Lower
from django.http import Http404

from accounts import hooks
from accounts.models import (
    AuditEvent,
    BillingRecipient,
    Invitation,
    Membership,
    Organisation,
    OutgoingEmail,
    PrimaryEmailChange,
    User,
)
from accounts.notification_links import NotificationLink, notification_link


def membership_for_user(*, user: User, org_slug: str) -> Membership:
    """The user's active membership in the organisation `org_slug`, or 404.

    One query answers all that the frame of an organisation page asks before the view runs
    (accounts.tenancy.tenant_view, then the context processors): the organisation, the columns
    the apps above accounts annotate through accounts.hooks (portal.frame: the SSO
    configuration's flags, whether a dunning case is open), and the organisation menu of the
    top bar. It reads every active membership of the user, in the menu's order, and returns
    the one of `org_slug` with the list on `menu_memberships` (accounts.context_processors).
    Read fresh on every request, never cached: a removed member or a changed role counts at
    once (docs/architecture.md#decision-page-frame-queries).
    """
    annotations = {}
    for extra in hooks.membership_annotations:
        annotations.update(extra())
    memberships = list(memberships_of_user(user=user).annotate(**annotations))
    for membership in memberships:
        if membership.organisation.slug == org_slug:
            membership.menu_memberships = memberships
            return membership
    raise Http404("No such organisation.")


def memberships_of_user(*, user: User) -> QuerySet[Membership]:
    return (
        Membership.objects.select_related("organisation")
        .filter(
            user=user,
            status=Membership.Status.ACTIVE,
            organisation__status=Organisation.Status.ACTIVE,
        )
        .order_by("organisation__name", "organisation__pk")
    )


def second_factors(user) -> QuerySet[Authenticator]:
    """The authenticators of `user` (a User or an OuterRef) that are a second factor: any but
    the recovery codes, which only back one up."""
    return Authenticator.objects.filter(user=user).exclude(type=Authenticator.Type.RECOVERY_CODES)


def membership_list(*, organisation: Organisation) -> QuerySet[Membership]:
    """The organisation's members, each with `has_two_factor` (whether they can sign in with a
    second factor, for the two-factor policy), in one query."""
    return (
        Membership.objects.filter(organisation=organisation)
        .select_related("user")
        .annotate(has_two_factor=Exists(second_factors(OuterRef("user"))))
        .order_by("status", "user__full_name", "user__email")
    )


def membership_get(*, organisation: Organisation, public_id) -> Membership:
    membership = (
        Membership.objects.select_related("user", "organisation")
        .filter(organisation=organisation, public_id=public_id)
        .first()
    )
    if membership is None:
        raise Http404("No such user in this organisation.")
    return membership


def invitation_list_pending(*, organisation: Organisation) -> QuerySet[Invitation]:
    return (
        Invitation.objects.filter(organisation=organisation, status=Invitation.Status.PENDING)
        .select_related("invited_by")
        .order_by("-created_at")
    )


def invitation_get(*, organisation: Organisation, public_id) -> Invitation:
    invitation = Invitation.objects.filter(organisation=organisation, public_id=public_id).first()
    if invitation is None:
        raise Http404("No such invitation.")
    return invitation


def audit_event_list(*, organisation: Organisation) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(organisation=organisation).order_by("-created_at", "-id")


def billing_recipients(*, organisation: Organisation) -> list[str]:
    """Who gets the billing emails (invoices, receipts, failed payments and the 3-D Secure
    confirmations, credit notes, card expiry, usage alerts): the primary email, the active
    Admins and Billing contacts, then the confirmed billing recipients; each address once.

    Only for emails about money: an email about the account itself (its subscription, its
    data, anything with a sign-in or an access link) goes to `account_recipients`, never to a
    billing recipient (docs/architecture.md#decision-billing-recipients). One query.
    """
    members = (
        _billing_members(organisation)
        .annotate(address=F("user__email"), kind=Value(0))
        .values_list("kind", "address")
    )
    extra = (
        _confirmed_billing_recipients(organisation)
        .annotate(address=F("email"), kind=Value(1))
        .values_list("kind", "address")
    )
    addresses = [address for _kind, address in sorted(members.union(extra, all=True))]
    return _each_once([organisation.primary_email, *addresses])


def account_recipients(*, organisation: Organisation) -> list[str]:
    """Who gets the emails about the account itself (the subscription's changes and its end,
    the deletion of the data): the primary email, then the active Admins and Billing contacts,
    each address once. Never the billing recipients, who have no account."""
    emails = _billing_members(organisation).values_list("user__email", flat=True)
    return _each_once([organisation.primary_email, *sorted(emails)])


def _each_once(emails: list[str]) -> list[str]:
    return list(dict.fromkeys(email.lower() for email in emails if email))


def _confirmed_billing_recipients(organisation: Organisation) -> QuerySet[BillingRecipient]:
    return BillingRecipient.objects.filter(
        organisation=organisation, removed_at__isnull=True, confirmed_at__isnull=False
    )


def billing_recipient_list(*, organisation: Organisation) -> QuerySet[BillingRecipient]:
    """The organisation's billing recipients, pending and confirmed, oldest first."""
    return BillingRecipient.objects.filter(
        organisation=organisation, removed_at__isnull=True
    ).order_by("created_at", "pk")


def billing_recipient_get(*, organisation: Organisation, public_id) -> BillingRecipient:
    """One of the organisation's billing recipients (removed ones too: the services say so),
    or 404."""
    recipient = BillingRecipient.objects.filter(
        organisation=organisation, public_id=public_id
    ).first()
    if recipient is None:
        raise Http404("No such billing recipient.")
    return recipient


def _billing_members(organisation: Organisation) -> QuerySet[Membership]:
    return Membership.objects.filter(
        organisation=organisation,
        status=Membership.Status.ACTIVE,
        role__in=[Membership.Role.ADMIN, Membership.Role.BILLING],
    )


# Notifications ---------------------------------------------------------------------------

# Emails whose body holds a one-time secret link (a token) for the person it was sent to. Others
# who may list them see the subject and recipients, never the body. Our templates are named
# after templates/emails/<name>/; the "account/email/..." ones are allauth's mails with a key or
# code (sent without an organisation today, so listed only in case that changes).
SECRET_LINK_TEMPLATES = frozenset(
    {
        "invitation",  # the accept link joins the organisation with a role
        "primary_email_verify",  # the link makes that address the primary email
        "billing_recipient_confirm",  # the link makes that address a billing recipient
        "account/email/email_confirmation",
        "account/email/email_confirmation_signup",
        "account/email/login_code",
        "account/email/password_reset_code",
        "account/email/password_reset_key",
    }
)


@dataclass(frozen=True)
class Addressee:
    """One recipient of a Notification, with what the page says about them ("billing
    recipient": an extra address, not a user; `withheld`: removed before it went out)."""

    email: str
    billing_recipient: bool = False
    withheld: bool = False


@dataclass(frozen=True)
class Notification:
    """One email as the Notifications page shows it: once, however many recipients it had."""

    message_id: uuid.UUID
    sent_at: datetime
    subject: str
    recipients: list[str]
    addressees: list[Addressee]
    # None when it carries a secret link for someone else: only the subject may be shown.
    body: str | None
    is_new: bool
    # The page where the email's action is, for this reader (accounts.notification_links).
    link: NotificationLink | None = None


def notification_rows(
    *, organisation: Organisation, user: User, role: str
) -> QuerySet[OutgoingEmail]:
    """The organisation's email rows (one per recipient) that `user`, with `role`, may see.

    The rule:
    - everyone sees the emails of this organisation addressed to them;
    - an Admin sees every email of the organisation, with all its recipients;
    - a Billing contact also sees the emails sent to the organisation's primary email (the
      current one or one it had before a change). Every billing and subscription email goes
      to `billing_recipients` or `account_recipients`, which always include the primary
      email, so this is all of them; of those emails they see the recipients that are the
      primary email, an Admin, a Billing contact or a billing recipient. Mail sent only to an
      Admin personally (an SSO certificate warning, a GDPR request notice) stays hidden from
      them;
    - a Member sees only their own recipient row, not who else got the same email.
    Emails without an organisation (allauth's) and other organisations' emails never appear.
    The body of a SECRET_LINK_TEMPLATES email is for its addressee only (`notification_page`).
    Addresses compare case-insensitively. All of it is one SQL query, subqueries included.
    """
    rows = OutgoingEmail.objects.filter(organisation=organisation).alias(to_lower=Lower("to_email"))
    if role == Membership.Role.ADMIN:
        return rows
    own = Q(to_lower=user.email.lower())
    if role != Membership.Role.BILLING:
        return rows.filter(own)
    former_primaries = PrimaryEmailChange.objects.filter(
        organisation=organisation, status=PrimaryEmailChange.Status.VERIFIED
    ).values(email=Lower("old_email"))
    to_primary = Q(to_lower=organisation.primary_email.lower()) | Q(to_lower__in=former_primaries)
    to_billing_member = Q(
        to_lower__in=_billing_members(organisation).values(email=Lower("user__email"))
    )
    to_billing_recipient = Q(billing_recipient__isnull=False)
    sent_to_primary = rows.filter(to_primary).values("message_id")
    return rows.filter(
        own
        | (
            Q(message_id__in=sent_to_primary)
            & (to_primary | to_billing_member | to_billing_recipient)
        )
    )


def notification_list(*, organisation: Organisation, user: User, role: str) -> QuerySet:
    """One row per email (`message_id`, `sent_at`) that `user` may see, newest first.

    Paginate this, then turn a page into Notifications with `notification_page`."""
    return (
        notification_rows(organisation=organisation, user=user, role=role)
        .values("message_id")
        .annotate(sent_at=Min("created_at"))
        .order_by("-sent_at", "-message_id")
    )


def notification_page(
    *,
    organisation: Organisation,
    user: User,
    role: str,
    messages: list[dict],
    new_after: datetime,
) -> list[Notification]:
    """The Notifications for one page of `notification_list` (one query for any page size).

    Each lists the recipients `user` may see; the body of a secret-link email is kept only
    when `user` is one of its addressees; each links to the page where its action is, when
    there is one `user` may open."""
    ids = [message["message_id"] for message in messages]
    rows = (
        notification_rows(organisation=organisation, user=user, role=role)
        .filter(message_id__in=ids)
        .only(
            "message_id",
            "to_email",
            "billing_recipient",
            "status",
            "template",
            "subject",
            "body_text",
            "created_at",
        )
        .order_by("created_at", "pk")
    )
    grouped: dict[uuid.UUID, list[OutgoingEmail]] = {}
    for row in rows:
        grouped.setdefault(row.message_id, []).append(row)
    own = user.email.lower()
    page = []
    for message in messages:
        group = grouped.get(message["message_id"])
        if not group:  # gone between the two queries (an organisation's data deleted)
            continue
        first = group[0]
        addressees = list(
            {
                row.to_email.lower(): Addressee(
                    email=row.to_email.lower(),
                    billing_recipient=row.billing_recipient_id is not None,
                    withheld=row.status == OutgoingEmail.Status.WITHHELD,
                )
                for row in group
            }.values()
        )
        recipients = [addressee.email for addressee in addressees]
        secret = first.template in SECRET_LINK_TEMPLATES and own not in recipients
        body = None if secret else first.body_text.strip()
        page.append(
            Notification(
                message_id=message["message_id"],
                sent_at=message["sent_at"],
                subject=first.subject,
                recipients=recipients,
                addressees=addressees,
                body=body,
                is_new=message["sent_at"] > new_after,
                link=notification_link(
                    template=first.template,
                    subject=first.subject,
                    # A one-time link is never offered, not even to its addressee.
                    body=None if first.template in SECRET_LINK_TEMPLATES else body,
                    organisation=organisation,
                    role=role,
                ),
            )
        )
    return page


def notification_unread_count(*, membership: Membership, user: User) -> int:
    """Emails `user` may see that arrived after they last opened the Notifications page, or
    since they joined if they never did (the invitation that brought them is not news).
    One query."""
    since = membership.notifications_seen_at or membership.created_at
    return (
        notification_rows(organisation=membership.organisation, user=user, role=membership.role)
        .filter(created_at__gt=since)
        .values("message_id")
        .distinct()
        .count()
    )
