"""The frame of every organisation page (tenant_view, the top bar, the banner) costs a fixed,
small number of queries before the view's own: the session, the user, one membership query
that also answers the SSO gate and whether a dunning case is open, then the unread marker and
the organisation menu when the top bar renders them."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.accounts.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def tables(captured):
    """The table of each query's first column, in order."""
    return [query["sql"].split('"', 2)[1] for query in captured]


# Before the view: tenant_view's reads. After it: what the top bar renders.
FRAME_BEFORE = [
    "django_session",
    "accounts_user",
    "accounts_membership",  # with the organisation, its SSO flags and open dunning case
]
FRAME_AFTER = [
    "accounts_outgoingemail",  # the unread marker
    "accounts_membership",  # the organisation menu
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
