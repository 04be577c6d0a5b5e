"""The frame of every organisation page (tenant_view, the top bar, the banner) costs a fixed,
small number of queries before the view's own: the session, the user, one membership query
that also answers the SSO gate, whether a dunning case is open and the organisation menu, then
the unread marker when the top bar renders it."""

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.audit import SYSTEM
from accounts.models import Membership, Organisation
from accounts.services import membership_change_role
from tests.accounts.factories import MembershipFactory, OrganisationFactory

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)

pytestmark = pytest.mark.django_db


def tables(captured):
    """The table of each query's first column, in order."""
    return [query["sql"].split('"', 2)[1] for query in captured]


# Before the view: tenant_view's reads. After it: what the top bar renders.
FRAME_BEFORE = [
    "accounts_usersession",
    "accounts_user",
    # With the organisation, its SSO flags and open dunning case, and the user's other
    # memberships for the organisation menu.
    "accounts_membership",
]
FRAME_AFTER = [
    "accounts_outgoingemail",  # the unread marker
]


@pytest.mark.parametrize(
    ("role", "page"),
    [
        # The Overview of an organisation without a plan (portal.overview): the subscription,
        # then for the Admin a payment to confirm, the SSO certificates and the last invoices.
        (
            "admin",
            [
                "subscriptions_subscription",
                "billing_invoice",
                "sso_ssoconfiguration",
                "billing_invoice",
            ],
        ),
        ("member", ["subscriptions_subscription"]),
    ],
)
def test_the_overview_page_costs_the_frame_and_its_own(client_for, org, other_org, role, page):
    user = MembershipFactory(organisation=org, role=role).user
    MembershipFactory(organisation=other_org, user=user)  # the menu lists both
    client = client_for(user)
    url = reverse("portal:overview", args=[org.slug])
    client.get(url)  # the first visit stores the organisation in the session
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    assert tables(captured) == FRAME_BEFORE + page + FRAME_AFTER
    html = response.content.decode()
    assert "account-banner" not in html
    assert html.count('href="/o/globex/"') == 1  # the other organisation, in the menu


def test_settings_navigation_links_each_section_of_the_role(client_for, org, billing_user):
    response = client_for(billing_user).get(reverse("billing:invoices", args=[org.slug]))
    html = response.content.decode()
    nav = html.split('<nav class="settings-nav"', 1)[1].split("</nav>", 1)[0]
    assert nav.count("<li>") == 2
    assert '<a href="/o/acme/settings/subscription/">Subscription</a>' in nav
    assert '<a href="/o/acme/settings/billing/" aria-current="page">Billing</a>' in nav


def menu(html: str) -> str:
    return html.split('<details class="org-menu">', 1)[1].split("</details>", 1)[0]


def test_the_role_and_the_menu_are_read_again_on_every_request(client_for, org, other_org, admin):
    """The membership query that answers the frame is never cached: a changed role, or an
    organisation of the menu that was deleted, shows on the very next request."""
    user = MembershipFactory(organisation=org, role=Membership.Role.ADMIN).user
    MembershipFactory(organisation=other_org, user=user)
    client = client_for(user)
    overview = reverse("portal:overview", args=[org.slug])
    subscription = reverse("subscriptions:settings", args=[org.slug])
    html = client.get(overview).content.decode()
    assert "· Admin" in menu(html)
    assert 'href="/o/globex/"' in menu(html)
    assert client.get(subscription).status_code == 200

    membership_change_role(
        membership=Membership.objects.get(organisation=org, user=user),
        actor=SYSTEM,
        role=Membership.Role.MEMBER,
        now=NOW,
    )
    assert client.get(subscription).status_code == 403
    assert "· Member" in menu(client.get(overview).content.decode())

    Organisation.objects.filter(pk=other_org.pk).update(status=Organisation.Status.DELETED)
    html = client.get(overview).content.decode()
    assert 'href="/o/globex/"' not in menu(html)
    assert 'href="/o/acme/"' in menu(html)
    assert client.get(reverse("portal:overview", args=[other_org.slug])).status_code == 404


def test_the_frame_costs_the_same_whatever_the_number_of_organisations(client_for, org):
    user = MembershipFactory(organisation=org, role=Membership.Role.MEMBER).user
    client = client_for(user)
    url = reverse("portal:overview", args=[org.slug])
    client.get(url)
    with CaptureQueriesContext(connection) as one:
        client.get(url)
    for name in ("Zeta", "Beta", "Delta"):
        MembershipFactory(organisation=OrganisationFactory(name=name), user=user)
    with CaptureQueriesContext(connection) as four:
        html = client.get(url).content.decode()
    assert tables(four) == tables(one)
    # The menu lists them by name, whichever was joined first.
    names = [name for name in ("Acme Trading", "Beta", "Delta", "Zeta") if name in menu(html)]
    assert names == ["Acme Trading", "Beta", "Delta", "Zeta"]
    positions = [menu(html).index(f">{name}<") for name in names]
    assert positions == sorted(positions)
