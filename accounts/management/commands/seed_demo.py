"""Demo data for `make run` (DESIGN.md section 3). Idempotent; refuses to run with DEBUG off."""

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from accounts.models import Membership, Organisation, User
from accounts.services import organisation_create

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

        self.stdout.write(f"Demo logins (password for all: {DEMO_PASSWORD})")
        for name, _slug, people in DEMO_ORGANISATIONS:
            for email, _full_name, role in people:
                self.stdout.write(f"  {name:<14} {role.label:<16} {email}")
        self.stdout.write(f"  {'Ops staff':<14} {'Django admin':<16} {OPS_EMAIL}  (/admin/)")
