"""Check the money invariants now (billing/ledger.py): one line per violation, exit 1 if any."""

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import Organisation
from billing.ledger import ledger_check
from core.management.commands.tick import parse_instant


class Command(BaseCommand):
    help = "Check the ledger invariants; prints one line per violation and exits 1 if any."

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Only this organisation (its slug).")
        parser.add_argument("--now", help="ISO-8601 date-time with offset (default: now).")

    def handle(self, *args, **options):
        now = parse_instant(options["now"]) if options["now"] else timezone.now()
        organisation_ids = None
        if options["org"]:
            organisation = Organisation.objects.filter(slug=options["org"]).first()
            if organisation is None:
                raise CommandError(f"No organisation with the slug {options['org']!r}.")
            organisation_ids = [organisation.pk]
        violations = ledger_check(now=now, organisation_ids=organisation_ids)
        for violation in violations:
            self.stdout.write(f"{violation.rule}\t{violation.subject}\t{violation.message}")
        if violations:
            raise CommandError(f"{len(violations)} ledger violation(s).", returncode=1)
        self.stdout.write("Ledger OK: no violation.")
