"""Cards: the organisation's Stripe customer, saving a card (Update Card), expiry reminders.

Card numbers never reach us: Stripe.js confirms a SetupIntent in the browser and we keep the
card's brand, last four digits and expiry as a PaymentMethod row.
"""

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction

from accounts.audit import Actor, audit_record
from accounts.emails import email_send
from accounts.models import Organisation
from accounts.selectors import billing_recipients
from accounts.services import organisation_lock
from billing import gateway
from billing.models import BillingProfile, PaymentMethod
from core.errors import ServiceError
from core.links import absolute_url

# The card-expiry reminder goes out this long before the card expires; the Overview lists the
# card as needing attention from the same day
# (docs/architecture.md#decision-one-card-expiry-reminder).
CARD_EXPIRY_REMINDER = timedelta(days=30)


def stripe_customer_ensure(*, organisation: Organisation) -> str:
    """The organisation's Stripe customer, created once (idempotency key from our own row)."""
    profile, _ = BillingProfile.objects.get_or_create(organisation=organisation)
    if profile.stripe_customer_id:
        return profile.stripe_customer_id
    customer_id = gateway.customer_create(
        name=organisation.name,
        email=organisation.primary_email,
        organisation_id=organisation.pk,
        idempotency_key=f"customer-organisation-{organisation.pk}",
    )
    BillingProfile.objects.filter(pk=profile.pk, stripe_customer_id="").update(
        stripe_customer_id=customer_id
    )
    profile.refresh_from_db(fields=["stripe_customer_id"])
    return profile.stripe_customer_id


def card_setup_begin(*, organisation: Organisation) -> str:
    """A SetupIntent's client secret for Stripe.js to collect a card (numbers never reach us)."""
    customer_id = stripe_customer_ensure(organisation=organisation)
    _setup_intent_id, client_secret = gateway.setup_intent_create(customer_id=customer_id)
    return client_secret


def _card_expires_at(exp_month: int, exp_year: int) -> datetime:
    if exp_month == 12:
        return datetime(exp_year + 1, 1, 1, tzinfo=UTC)
    return datetime(exp_year, exp_month + 1, 1, tzinfo=UTC)


def card_setup_complete(
    *, organisation: Organisation, actor: Actor, setup_intent_id: str, now: datetime
) -> PaymentMethod:
    """Update Card: the confirmed card becomes the one charged from the next billing date."""
    customer_id = stripe_customer_ensure(organisation=organisation)
    try:
        card = gateway.setup_intent_card(setup_intent_id=setup_intent_id, customer_id=customer_id)
    except gateway.PaymentError as error:
        # The code tells the page whether Stripe is reachable (`gateway_unavailable`).
        raise ServiceError(error.message, code=error.code or "invalid") from error
    if card.brand not in settings.ACCEPTED_CARD_BRANDS:
        gateway.card_detach(payment_method_id=card.payment_method_id)
        raise ServiceError(
            "We accept Visa, Mastercard and American Express cards. Please use one of those."
        )
    gateway.card_make_default(customer_id=customer_id, payment_method_id=card.payment_method_id)
    return _card_store(organisation, actor=actor, card=card, now=now)


def _card_store(
    organisation: Organisation, *, actor: Actor, card: gateway.CardDetails, now: datetime
) -> PaymentMethod:
    """Keep the confirmed card as the active PaymentMethod; the previous one is replaced.
    Completing the same SetupIntent twice keeps one row."""
    with transaction.atomic():
        organisation_lock(organisation)
        existing = PaymentMethod.objects.filter(
            stripe_payment_method_id=card.payment_method_id
        ).first()
        if existing is not None:
            if existing.organisation_id != organisation.pk:
                raise ServiceError("This card could not be saved. Please enter it again.")
            return existing
        previous = PaymentMethod.objects.filter(
            organisation=organisation, status=PaymentMethod.Status.ACTIVE
        ).first()
        if previous is not None:
            previous.status = PaymentMethod.Status.REPLACED
            previous.replaced_at = now
            previous.save(update_fields=["status", "replaced_at"])
        method = PaymentMethod.objects.create(
            organisation=organisation,
            stripe_payment_method_id=card.payment_method_id,
            brand=card.brand,
            last4=card.last4,
            exp_month=card.exp_month,
            exp_year=card.exp_year,
            expires_at=_card_expires_at(card.exp_month, card.exp_year),
            created_at=now,
            created_by=actor.user,
        )
        audit_record(
            organisation=organisation,
            actor=actor,
            action="billing.card_updated",
            target=method,
            target_label=str(method),
            changes={"card": {"old": str(previous) if previous else None, "new": str(method)}},
            now=now,
        )
    return method


def card_expiry_reminders_send(*, now: datetime) -> int:
    """Email Admins and Billing contacts once, 30 days before the card on file expires."""
    due = PaymentMethod.objects.filter(
        status=PaymentMethod.Status.ACTIVE,
        expiry_reminder_sent_at__isnull=True,
        expires_at__lte=now + CARD_EXPIRY_REMINDER,
        expires_at__gt=now,
    ).values_list("pk", flat=True)
    sent = 0
    for pk in list(due):
        with transaction.atomic():
            # The conditional update claims the reminder: a second run finds nothing to send.
            claimed = PaymentMethod.objects.filter(
                pk=pk, expiry_reminder_sent_at__isnull=True
            ).update(expiry_reminder_sent_at=now)
            if not claimed:
                continue
            method = PaymentMethod.objects.select_related("organisation").get(pk=pk)
            email_send(
                template="card_expiring",
                to=billing_recipients(organisation=method.organisation),
                context={
                    "card": method,
                    "payment_method_url": absolute_url(
                        "billing:payment_method", method.organisation.slug
                    ),
                },
                organisation=method.organisation,
            )
            sent += 1
    return sent
