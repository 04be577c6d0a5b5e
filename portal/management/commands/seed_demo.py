"""Demo data for `make run` (portal/demo.py). Idempotent; refuses to run with DEBUG off.

See docs/architecture.md#decision-development-and-demo-contracts.
"""

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone


class Command(BaseCommand):
    help = "Create the demo organisations, their history and the demo logins. Safe to run again."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("seed_demo creates known passwords and runs only with DEBUG on.")
        # Imported once DEBUG is known to be on: the demo drives the development stand-ins
        # (devkit), whose packages a production image does not install, and the refusal
        # above must be the one-line answer there.
        from portal import demo  # noqa: PLC0415

        started = time.monotonic()
        demo.seed(now=timezone.now())
        self.stdout.write(
            f"Demo data ready in {time.monotonic() - started:.1f}s. "
            f"Demo logins (password for all: {demo.PASSWORD}); see README.md#demo-logins"
        )
        for organisation, role, email in demo.logins():
            self.stdout.write(f"  {organisation:<14} {role:<16} {email}")
        self.stdout.write(
            f"  SSO: Globex's 'Sign in with SSO' goes to the test IdP at {demo.demo_idp().sso_url};"
            f" sign in there as {demo.IDP_USER}"
        )
