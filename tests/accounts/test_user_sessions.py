"""Session records, the sessions section of Security and ending sessions
(docs/architecture.md#decision-session-records-and-sign-in-notices)."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.audit import Actor
from accounts.models import Membership, UserSession
from accounts.services import membership_deactivate, membership_remove, user_end_sessions
from accounts.user_agents import describe_user_agent
from tests.accounts.factories import PASSWORD, MembershipFactory
from tests.accounts.sessions import (
    CHROME_MAC,
    FIREFOX_WINDOWS,
    SAFARI_IPHONE,
    signed_in_session,
)

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)

pytestmark = pytest.mark.django_db


def browser(user_agent=CHROME_MAC, address="198.51.100.4"):
    return Client(HTTP_USER_AGENT=user_agent, REMOTE_ADDR=address)


def sign_in(client, user):
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302, response.content
    return UserSession.objects.get(session_key=client.session.session_key)


def security(client):
    return client.get(reverse("accounts:security"))


def end(client, session):
    return client.post(reverse("accounts:session_end", args=[session.public_id]))


def end_others(client):
    return client.post(reverse("accounts:sessions_end_others"))


def messages_of(response):
    """The messages of the response, without the one of signing in."""
    messages = [str(message) for message in get_messages(response.wsgi_request)]
    return [message for message in messages if not message.startswith("Successfully signed in")]


def signed_in(client):
    """Whether the client's next request is still signed in."""
    response = client.get(reverse("accounts:organisations"))
    return response.status_code == 200


# The user agent parser ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "name"),
    [
        (CHROME_MAC, "Chrome on macOS"),
        (FIREFOX_WINDOWS, "Firefox on Windows"),
        (SAFARI_IPHONE, "Safari on iPhone"),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/18.1 Safari/605.1.15",
            "Safari on macOS",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86",
            "Edge on Windows",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.6778.104 Mobile Safari/537.36",
            "Chrome on Android",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 17_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
            "Chrome on iPad",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) FxiOS/133.0 Mobile/15E148 Safari/605.1.15",
            "Firefox on iPhone",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Firefox on Linux",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36 OPR/115.0.0.0",
            "Opera on Windows",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
            "Samsung Internet on Android",
        ),
        (
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36",
            "Chrome on ChromeOS",
        ),
        ("curl/8.5.0", "Unknown browser"),
        ("Mozilla/5.0 (X11; Linux x86_64) SomethingNew/1.0", "A browser on Linux"),
        ("", "Unknown browser"),
        (None, "Unknown browser"),
    ],
)
def test_the_user_agent_is_named_as_people_know_it(user_agent, name):
    assert describe_user_agent(user_agent) == name


# Records ----------------------------------------------------------------------------------


def test_signing_in_records_the_session_user_browser_and_address(member):
    client = browser(FIREFOX_WINDOWS, "198.51.100.4")
    with time_machine.travel(NOW, tick=False):
        session = sign_in(client, member)
    assert (
        session.user,
        session.created_at,
        session.last_seen_at,
        session.user_agent,
        session.ip_address,
        session.auth_hash,
    ) == (member, NOW, NOW, FIREFOX_WINDOWS, "198.51.100.4", member.get_session_auth_hash())
    assert session.session_key not in str(session.public_id)


@pytest.mark.parametrize("proxies", [1])
def test_the_address_is_the_one_the_proxy_passes(member, settings, proxies):
    settings.TRUSTED_PROXY_COUNT = proxies
    client = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.9, 203.0.113.50")
    assert sign_in(client, member).ip_address == "203.0.113.50"


@pytest.mark.parametrize("forwarded", ["unknown", "203.0.113.500", "<script>"])
def test_an_address_that_is_not_one_is_not_recorded(member, settings, forwarded):
    settings.TRUSTED_PROXY_COUNT = 1
    client = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded)
    session = sign_in(client, member)
    assert session.ip_address is None
    assert "Unknown" in security(client).content.decode()


def test_a_long_user_agent_is_truncated(member):
    session = sign_in(browser("Mozilla/5.0 " + "x" * 1000), member)
    assert len(session.user_agent) == 300


def test_an_anonymous_session_has_no_user_and_no_record(client):
    client.get(reverse("account_login"))  # the CSRF token only; no session yet
    session = client.session
    session["anything"] = 1
    session.save()
    row = UserSession.objects.get(session_key=session.session_key)
    assert (row.user_id, row.last_seen_at, row.user_agent) == (None, None, "")


def test_the_last_use_is_written_at_most_every_five_minutes_and_costs_no_query(member):
    client = browser()
    with time_machine.travel(NOW, tick=False):
        session = sign_in(client, member)
    page = reverse("accounts:organisations")

    def view_at(moment):
        with time_machine.travel(moment, tick=False), CaptureQueriesContext(connection) as q:
            assert client.get(page).status_code == 200
        return [query["sql"] for query in q.captured_queries]

    within = view_at(NOW + timedelta(minutes=4, seconds=59))
    session.refresh_from_db()
    assert session.last_seen_at == NOW
    on_sessions = [sql for sql in within if "accounts_usersession" in sql]
    assert len(on_sessions) == 1
    assert on_sessions[0].startswith("SELECT")
    # A second view in the window costs the same queries: nothing rides on it.
    assert len(view_at(NOW + timedelta(minutes=4, seconds=59))) == len(within)

    after = view_at(NOW + timedelta(minutes=5))
    session.refresh_from_db()
    assert session.last_seen_at == NOW + timedelta(minutes=5)
    writes = [sql for sql in after if sql.startswith("UPDATE") and "accounts_usersession" in sql]
    assert len(writes) == 1
    # The one UPDATE, in the savepoint Django's session engine writes in.
    statements = [sql for sql in after if "SAVEPOINT" not in sql]
    assert len(statements) == len(within) + 1
    # The write does not reset when the session was made.
    assert session.created_at == NOW


def test_signing_out_deletes_the_session_row(member):
    client = browser()
    session = sign_in(client, member)
    client.post(reverse("account_logout"))
    assert not UserSession.objects.filter(pk=session.pk).exists()


# The list ---------------------------------------------------------------------------------


def test_security_lists_the_users_live_sessions_with_this_browser_first(member, admin):
    client = browser(CHROME_MAC, "198.51.100.4")
    with time_machine.travel(NOW, tick=False):
        sign_in(client, member)
    with time_machine.travel(NOW - timedelta(hours=3), tick=False):
        signed_in_session(member, user_agent=SAFARI_IPHONE, ip_address="203.0.113.7")
    with time_machine.travel(NOW - timedelta(days=20), tick=False):
        signed_in_session(member, user_agent=FIREFOX_WINDOWS, ip_address="203.0.113.8")  # expired
    signed_in_session(admin, user_agent=FIREFOX_WINDOWS, ip_address="203.0.113.9")  # not theirs
    with time_machine.travel(NOW + timedelta(minutes=1), tick=False):
        response = security(client)
    listed = response.context["user_sessions"]
    assert [(s.device, s.ip_address, s.is_current, s.last_use_label) for s in listed] == [
        ("Chrome on macOS", "198.51.100.4", True, "In the last 5 minutes"),
        ("Safari on iPhone", "203.0.113.7", False, "3\xa0hours ago"),
    ]
    page = response.content.decode()
    assert "This browser" in page
    assert '<time datetime="2026-03-10T06:00:00+00:00" title="10 Mar 2026, 06:00 UTC">' in page
    assert "Sign out all other sessions" in page
    assert "203.0.113.8" not in page
    assert "203.0.113.9" not in page
    # The session key never reaches the page.
    assert client.session.session_key not in page
    for session in UserSession.objects.all():
        assert session.session_key not in page


def test_sessions_of_an_old_password_are_not_listed(member):
    client = browser()
    other = signed_in_session(member, user_agent=SAFARI_IPHONE)
    member.set_password("another-long-passphrase")
    member.save(update_fields=["password"])
    client.post(
        reverse("account_login"), {"login": member.email, "password": "another-long-passphrase"}
    )
    listed = security(client).context["user_sessions"]
    assert [s.public_id for s in listed] == [client_session(client).public_id]
    assert other.public_id not in [s.public_id for s in listed]
    # Its row is still there (Django refuses it by its hash), and ending it is a 404.
    assert end(client, other).status_code == 404


def client_session(client):
    return UserSession.objects.get(session_key=client.session.session_key)


def test_the_section_costs_the_same_queries_however_many_sessions(member):
    client = browser()
    sign_in(client, member)

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert security(client).status_code == 200
        return len(captured)

    one = queries()
    for _ in range(6):
        signed_in_session(member, user_agent=SAFARI_IPHONE)
    assert len(security(client).context["user_sessions"]) == 7
    assert queries() == one


# Ending sessions --------------------------------------------------------------------------


def test_signing_out_another_session_signs_that_browser_out_at_once(member):
    laptop, phone = browser(CHROME_MAC), browser(SAFARI_IPHONE, "203.0.113.7")
    sign_in(laptop, member)
    phone_session = sign_in(phone, member)
    assert signed_in(phone)
    response = end(laptop, phone_session)
    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:security")
    assert messages_of(response) == ["Signed out the session on Safari on iPhone."]
    assert not UserSession.objects.filter(pk=phone_session.pk).exists()
    assert not signed_in(phone)
    assert signed_in(laptop)


def test_another_users_session_is_a_404_and_ends_nothing(member, outsider):
    client = browser()
    sign_in(client, member)
    theirs = signed_in_session(outsider)
    assert end(client, theirs).status_code == 404
    assert UserSession.objects.filter(pk=theirs.pk).exists()


def test_an_unknown_or_ended_session_is_a_404(member):
    client = browser()
    sign_in(client, member)
    other = signed_in_session(member)
    assert end(client, other).status_code == 302
    assert end(client, other).status_code == 404  # twice: already ended
    response = client.post(
        reverse("accounts:session_end", args=["6f1c7d1e-0000-4000-8000-000000000000"])
    )
    assert response.status_code == 404


def test_the_session_in_use_is_not_ended_from_the_list(member):
    client = browser()
    current = sign_in(client, member)
    response = end(client, current)
    assert response["Location"] == reverse("accounts:security")
    assert messages_of(response) == ["This is the session you are using. To end it, use Sign out."]
    assert UserSession.objects.filter(pk=current.pk).exists()
    assert signed_in(client)


def test_sign_out_all_others_keeps_this_browser(member, admin):
    laptop, phone, tablet = browser(), browser(SAFARI_IPHONE), browser(FIREFOX_WINDOWS)
    current = sign_in(laptop, member)
    sign_in(phone, member)
    sign_in(tablet, member)
    admins = signed_in_session(admin)
    response = end_others(laptop)
    assert messages_of(response) == ["Signed out 2 other sessions. This browser stays signed in."]
    assert list(UserSession.objects.filter(user=member)) == [current]
    assert UserSession.objects.filter(pk=admins.pk).exists()
    assert (signed_in(laptop), signed_in(phone), signed_in(tablet)) == (True, False, False)
    # Twice: nothing left to end.
    assert messages_of(end_others(laptop)) == ["You have no other sessions to sign out."]


def test_ending_sessions_takes_a_post(member):
    client = browser()
    sign_in(client, member)
    other = signed_in_session(member)
    url = reverse("accounts:session_end", args=[other.public_id])
    assert client.get(url).status_code == 405
    assert client.get(reverse("accounts:sessions_end_others")).status_code == 405
    assert UserSession.objects.filter(pk=other.pk).exists()


def test_signed_out_visitors_are_sent_to_sign_in(member):
    other = signed_in_session(member)
    response = Client().post(reverse("accounts:session_end", args=[other.public_id]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
    assert UserSession.objects.filter(pk=other.pk).exists()


@pytest.mark.parametrize("how", ["deactivate", "remove", "end"])
def test_deactivation_and_removal_empty_the_list_at_once(org, admin, how):
    membership = MembershipFactory(organisation=org, role=Membership.Role.MEMBER)
    user = membership.user
    phone = browser(SAFARI_IPHONE)
    sign_in(phone, user)
    signed_in_session(user)
    if how == "deactivate":
        membership_deactivate(membership=membership, actor=Actor(user=admin), now=NOW)
    elif how == "remove":
        membership_remove(membership=membership, actor=Actor(user=admin), now=NOW)
    else:
        user_end_sessions(user=user)
    assert not UserSession.objects.filter(user=user).exists()
    assert not signed_in(phone)
