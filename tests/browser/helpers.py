"""Plain helpers for the browser tests (fixtures stay in tests/browser/conftest.py)."""

import os
import re


def chromium_env() -> dict:
    """On a moved clock (scripts/test_dates.sh) Chromium moves its monotonic clock too.

    The suite keeps monotonic clocks real there (Python's timed waits need it), but then
    libfaketime 0.9.10 shifts the deadlines of Chromium's waits on monotonic condition
    variables by the whole offset: it spins or stalls. With both clocks moved it runs normally.
    """
    env = dict(os.environ)
    env.pop("FAKETIME_DONT_FAKE_MONOTONIC", None)
    return env


def link_in_mail(message, path_prefix: str) -> str:
    match = re.search(rf"https?://[^/\s]+{re.escape(path_prefix)}[^\s]+", message.body)
    assert match, message.body
    return match.group(0)


def billing_staff(email: str):
    """A member of the Billing staff group. A committing test that ran earlier may have left
    the tables empty, content types, permissions and staff groups included (the reload of
    tests/conftest.py misses in browser tests): they are made again first."""
    from django.apps import apps
    from django.contrib.auth.management import create_permissions
    from django.contrib.auth.models import Group
    from django.contrib.contenttypes.management import create_contenttypes

    from support import staff
    from tests.accounts.factories import UserFactory

    for config in apps.get_app_configs():
        create_contenttypes(config, verbosity=0)
        create_permissions(config, verbosity=0)
    staff.staff_groups_ensure()
    user = UserFactory(email=email, is_staff=True)
    user.groups.add(Group.objects.get(name=staff.BILLING))
    return user
