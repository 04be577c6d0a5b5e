"""axe-core on every page, for every role, at 1280 px and 375 px; and nothing wider than a
375 px screen (docs/architecture.md#decision-every-url-has-a-permission-row gives the list).

The pages are those of tests/browser/pages.py: every URL of the URL matrix that answers the
role with an HTML page, with the matrix's World of data (an invoice with a credit note and a
revised copy, a ticket with an attachment, a pending invitation, an SSO configuration...) plus
Sync Info rows, committed for the live server. Roles: the anonymous visitor (the sign-in,
sign-up, password-reset, invitation and SSO sign-in pages), a Member, a Billing contact and an
Admin of organisation A, and ops staff on Django admin (dashboard, changelists, change pages).

Serious and critical axe violations fail, and so does any finding of the Label in Name rule
(enabled explicitly: axe-core marks it experimental). axe-core comes bundled with
axe-playwright-python and is injected into the page: nothing is fetched at run time.

The overflow check runs at 375 px on the portal and sign-in pages. Django admin's own layout is
exempt from it (its changelists scroll sideways by design); axe still runs there, on the main
admin pages (the dashboard, the admin's own views, and the lists and change pages of
pages.MAIN_ADMIN_MODELS).

One browser context per role, signed in once; each page is opened once and checked at 1280 px,
then resized to 375 px and checked again.
"""

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.accounts.factories import MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.helpers import subscribe
from tests.browser.pages import (
    OVERFLOW_JS,
    Page,
    axe_in_every_page,
    axe_problems,
    pages_for,
    session_cookie,
    sync_info_rows,
)
from tests.core.test_url_matrix import World

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

ROLES = ("anonymous", "member", "billing", "admin", "ops")
WIDTHS = (1280, 375)
NARROW = 375
# A floor, so a broken derivation (no pages found) fails rather than passes empty.
MINIMUM_PAGES = {"anonymous": 5, "member": 5, "billing": 10, "admin": 20, "ops": 20}


@pytest.fixture
def world(org, other_org, member, billing_user, admin, outsider):
    from django.utils import timezone

    world = World(
        org=org,
        other_org=other_org,
        member=member,
        billing=billing_user,
        admin=admin,
        outsider=outsider,
    )
    sync_info_rows(world, timezone.now())
    return world


def crawl(browser, portal, world, role):
    """([(page, width, problem)], {width: paths visited}) for `role`."""
    return check_pages(browser, portal, world.users[role], pages_for(role, world))


def check_pages(browser, portal, user, entries):
    """([(page, width, problem)], {width: paths visited}) for `user` (None: signed out). Each
    page is opened once and checked at each width in turn: the viewport is resized, and the
    layout follows (media queries only, no script reads the width)."""
    problems = []
    visited = {width: [] for width in WIDTHS}
    context = browser.new_context(viewport={"width": WIDTHS[0], "height": 900})
    context.set_default_timeout(10_000)
    axe_in_every_page(context)
    try:
        if user is not None:
            context.add_cookies([session_cookie(user, portal)])
        page = context.new_page()
        for entry in entries:
            page.set_viewport_size({"width": WIDTHS[0], "height": 900})
            response = open_page(page, portal + entry.url)
            if response is None:  # a download or another answer that is not a page
                continue
            for width in WIDTHS:
                if width != WIDTHS[0]:
                    page.set_viewport_size({"width": width, "height": 900})
                visited[width].append(page.url.removeprefix(portal))
                if response.status != 200:
                    problems.append((entry, width, f"HTTP {response.status}"))
                    break
                problems += [(entry, width, p) for p in axe_problems(page)]
                if width == NARROW and not entry.admin:
                    problems += [(entry, width, p) for p in page.evaluate(OVERFLOW_JS)]
    finally:
        context.close()
    return problems, visited


def open_page(page, url):
    """The response of `url` opened in `page`, or None when it is not an HTML page (a CSV or
    PDF download, JSON, XML, JavaScript)."""
    try:
        response = page.goto(url)
    except PlaywrightError as error:
        if "Download is starting" in str(error):
            return None
        raise
    if not response.headers.get("content-type", "").startswith("text/html"):
        return None
    return response


@pytest.mark.parametrize("role", ROLES)
def test_every_page_is_accessible_and_fits_375_px(browser, portal, world, role):
    problems, visited = crawl(browser, portal, world, role)
    print(f"{role}: " + ", ".join(f"{len(urls)} pages at {w} px" for w, urls in visited.items()))
    assert len(visited[WIDTHS[0]]) >= MINIMUM_PAGES[role], visited
    assert not problems, f"{role}: {len(problems)} problems\n" + "\n".join(
        f"{entry.url} [{entry.key}] at {width} px: {problem}" for entry, width, problem in problems
    )


def test_the_pages_of_a_new_customer_and_of_an_upgrade(browser, portal, localstripe):
    """The pages the matrix's world cannot show, being subscribed to Enterprise: an
    organisation without a plan (Overview, Subscription, Choose a plan, Checkout with Stripe.js's
    card form) and a Professional one confirming an upgrade."""
    from django.urls import reverse
    from django.utils import timezone

    new = OrganisationFactory(name="New Co", slug="new-co")
    newcomer = UserFactory(email="ada@new.test")
    MembershipFactory(organisation=new, user=newcomer, role="admin")
    growing = OrganisationFactory(name="Growing Ltd", slug="growing")
    upgrader = UserFactory(email="ada@growing.test")
    MembershipFactory(organisation=growing, user=upgrader, role="admin")
    subscribe(growing, now=timezone.now() - timezone.timedelta(days=10))

    def at(name, slug, query=""):
        return Page(key=name, url=reverse(name, args=[slug]) + query, admin=False)

    for user, entries in (
        (
            newcomer,
            [
                at("portal:overview", "new-co"),
                at("subscriptions:settings", "new-co"),
                at("billing:choose_plan", "new-co"),
                at(
                    "billing:checkout",
                    "new-co",
                    "?plan=professional&billing_cycle=monthly&currency=USD",
                ),
            ],
        ),
        (upgrader, [at("billing:upgrade_confirm", "growing", "?plan=enterprise")]),
    ):
        problems, visited = check_pages(browser, portal, user, entries)
        assert visited[NARROW] == [entry.url for entry in entries]
        assert not problems, "\n".join(
            f"{entry.url} at {width} px: {problem}" for entry, width, problem in problems
        )


def test_the_organisation_menu_is_named_by_what_it_shows(browser, portal, world):
    """Label in Name (WCAG 2.5.3): the menu showing "Acme Trading" is the button named
    "Acme Trading ...", so "click Acme Trading" opens it; at both widths (at 375 px the email
    line is hidden and the name still leads)."""
    for width in WIDTHS:
        context = browser.new_context(viewport={"width": width, "height": 900})
        try:
            context.add_cookies([session_cookie(world.users["admin"], portal)])
            page = context.new_page()
            page.goto(f"{portal}/o/acme/")
            summary = page.locator(".org-menu > summary")
            assert summary.get_attribute("aria-label") is None
            role, name = accessible_role_and_name(page, ".org-menu > summary")
            # The rendered text (the hint included: it is clipped, not removed), and the name
            # without the CSS arrow.
            shown = " ".join(summary.inner_text().split())
            name = " ".join(name.replace("▾", "").split())
            assert name == shown, f"accessible name {name!r}, rendered text {shown!r}"
            assert name.startswith("Acme Trading "), name
            assert name.endswith(" (organisation menu)"), name
            assert ("admin@acme.test · Admin" in name) is (width > NARROW), name
            assert role in ("button", "DisclosureTriangle"), role
            summary.press("Enter")
            settings = page.locator(".org-menu .menu").get_by_role("link", name="Settings")
            expect(settings).to_be_visible()
        finally:
            context.close()


def accessible_role_and_name(page, selector):
    """Chromium's own role and accessible name of the element at `selector`: what a screen
    reader or speech input gets (Playwright's roles leave <summary> out)."""
    cdp = page.context.new_cdp_session(page)
    try:
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        tree = cdp.send("Accessibility.getPartialAXTree", {"nodeId": node, "fetchRelatives": False})
    finally:
        cdp.detach()
    own = tree["nodes"][0]
    return own["role"]["value"], own["name"]["value"]
