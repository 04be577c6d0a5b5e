"""Demo data for `make run`. Idempotent; refuses to run with DEBUG off.

See docs/architecture.md#decision-development-and-demo-contracts.
"""

from allauth.account.models import EmailAddress
from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from accounts.audit import SYSTEM
from accounts.models import Membership, Organisation, User
from accounts.services import organisation_create
from billing import gateway
from billing.cards import card_setup_begin, card_setup_complete
from billing.checkout import subscription_checkout
from billing.invoicing import billing_run_issue
from billing.models import BillingProfile, PaymentMethod
from billing.payments import invoices_charge_due
from subscriptions.models import Plan, Subscription

DEMO_PASSWORD = "demo-pass-2026"  # noqa: S105 - published demo logins, development only

DEMO_ORGANISATIONS = [
    (
        "Acme Trading",
        "acme-trading",
        [
            ("admin@acme.example", "Ada Admin", Membership.Role.ADMIN),
            ("billing@acme.example", "Bill Ing", Membership.Role.BILLING),
            ("member@acme.example", "Mel Member", Membership.Role.MEMBER),
        ],
    ),
    ("Globex", "globex", [("admin@globex.example", "Gina Globex", Membership.Role.ADMIN)]),
]
OPS_EMAIL = "ops@example.com"
# organisation, slug, -, plan, cycle: each gets a card and a paid invoice history.
DEMO_SUBSCRIPTIONS = [
    ("Acme Trading", "acme-trading", None, "professional", "monthly"),
    ("Globex", "globex", None, "enterprise", "annual"),
]
HISTORY_MONTHS = 4


def _user(email: str, full_name: str, *, staff: bool = False) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        user = User.objects.create_user(
            email=email,
            password=DEMO_PASSWORD,
            full_name=full_name,
            is_staff=staff,
            is_superuser=staff,
        )
    EmailAddress.objects.update_or_create(
        user=user, email=email, defaults={"verified": True, "primary": True}
    )
    return user


class Command(BaseCommand):
    help = "Create the demo organisations and logins. Safe to run again."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("seed_demo creates known passwords and runs only with DEBUG on.")
        now = timezone.now()
        with transaction.atomic():
            for name, slug, people in DEMO_ORGANISATIONS:
                owner_email, owner_name, _role = people[0]
                owner = _user(owner_email, owner_name)
                organisation = Organisation.objects.filter(slug=slug).first()
                if organisation is None:
                    organisation = organisation_create(name=name, owner=owner, now=now)
                    if organisation.slug != slug:
                        organisation.slug = slug
                        organisation.save(update_fields=["slug"])
                for email, full_name, role in people:
                    user = _user(email, full_name)
                    Membership.objects.get_or_create(
                        organisation=organisation,
                        user=user,
                        defaults={"role": role, "created_at": now},
                    )
            _user(OPS_EMAIL, "Olly Ops", staff=True)

        for _name, slug, _people, plan_code, cycle in DEMO_SUBSCRIPTIONS:
            self._subscribe(Organisation.objects.get(slug=slug), plan_code, cycle, now=now)

        self.stdout.write(f"Demo logins (password for all: {DEMO_PASSWORD})")
        for name, _slug, people in DEMO_ORGANISATIONS:
            for email, _full_name, role in people:
                self.stdout.write(f"  {name:<14} {role.label:<16} {email}")
        self.stdout.write(f"  {'Ops staff':<14} {'Django admin':<16} {OPS_EMAIL}  (/admin/)")

    def _subscribe(self, organisation, plan_code, cycle, *, now):
        """A card on file (re-created if the local Stripe stand-in was restarted) and, the first
        time, a subscription started HISTORY_MONTHS ago with its invoices issued and paid."""
        profile = BillingProfile.objects.filter(organisation=organisation).first()
        if (
            profile
            and profile.stripe_customer_id
            and not gateway.customer_exists(customer_id=profile.stripe_customer_id)
        ):
            # The local stand-in keeps its data in memory: after a restart the demo customer and
            # card are gone there, so they are made again (the old card stays as history).
            BillingProfile.objects.filter(pk=profile.pk).update(stripe_customer_id="")
            PaymentMethod.objects.filter(organisation=organisation, status="active").update(
                status=PaymentMethod.Status.REPLACED, replaced_at=now
            )
        if not PaymentMethod.objects.filter(organisation=organisation, status="active").exists():
            client_secret = card_setup_begin(organisation=organisation)
            setup_intent_id = gateway.setup_intent_id_from_client_secret(client_secret)
            gateway.setup_intent_confirm_test_card(
                setup_intent_id=setup_intent_id, number="4242424242424242"
            )
            card_setup_complete(
                organisation=organisation, actor=SYSTEM, setup_intent_id=setup_intent_id, now=now
            )
        if Subscription.objects.filter(organisation=organisation).exists():
            return
        start = now - relativedelta(months=HISTORY_MONTHS if cycle == "monthly" else 1)
        BillingProfile.objects.filter(organisation=organisation).update(
            company_name=f"{organisation.name} Ltd",
            address_line1="1 Market Street",
            city="Dublin",
            postal_code="D01 F5P2",
            country="IE",
        )
        # The card on file (saved above) pays the first invoice.
        subscription_checkout(
            organisation=organisation,
            actor=SYSTEM,
            plan=Plan.objects.get(code=plan_code),
            billing_cycle=cycle,
            currency="USD",
            now=start,
        )
        # Renew period by period, as the scheduled billing run would have done.
        subscription = Subscription.objects.get(organisation=organisation)
        while subscription.current_period_end <= now:
            billing_run_issue(now=subscription.current_period_end)
            invoices_charge_due(now=subscription.current_period_end)
            subscription.refresh_from_db()
