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


# Two animation frames after the load event: the layout the person sees.
_SETTLED_WIDTH_JS = """
() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(
  () => done(document.documentElement.scrollWidth))))
"""


def page_width(page) -> int:
    """How wide the page lays out once it has settled.

    On a phone Chromium lays a new page out 980 px wide until it applies the page's viewport
    tag, which can come a frame after the first content shows: measured at once, a page that
    fits can read 980 px (and `scrollWidth <= innerWidth` can hold on a page that does not).
    """
    page.wait_for_load_state("load")
    return page.evaluate(_SETTLED_WIDTH_JS)


def assert_fits_screen(page) -> None:
    """Nothing wider than the screen: no sideways scrolling."""
    screen, width = page.viewport_size["width"], page_width(page)
    assert width <= screen, f"the page is {width} px wide on a {screen} px screen"
