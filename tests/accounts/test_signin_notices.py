"""Sign-in notices: an email on a sign-in from a browser not seen before for that user
(docs/architecture.md#decision-session-records-and-sign-in-notices)."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.core import mail
from django.db import connection
from django.http import HttpRequest
from django.test import Client
from django.urls import reverse

from accounts.jobs import purge_known_browsers
from accounts.models import KnownBrowser, OutgoingEmail
from accounts.signin_notices import (
    BROWSER_COOKIE,
    browser_id_from_request,
    known_browsers_purge,
    signin_record,
)
from core.jobs import all_jobs
from tests.accounts.factories import PASSWORD, UserFactory
from tests.accounts.sessions import CHROME_MAC, FIREFOX_WINDOWS, SAFARI_IPHONE

NOW = datetime(2026, 3, 10, 9, 5, tzinfo=UTC)

pytestmark = pytest.mark.django_db


def browser(user_agent=CHROME_MAC, address="198.51.100.4"):
    return Client(HTTP_USER_AGENT=user_agent, REMOTE_ADDR=address)


def sign_in(client, user, committed, *, at=NOW):
    with time_machine.travel(at, tick=False), committed():
        response = client.post(
            reverse("account_login"), {"login": user.email, "password": PASSWORD}
        )
    assert response.status_code == 302
    return response


def notices():
    return [message for message in mail.outbox if message.subject.startswith("New sign-in")]


@pytest.fixture
def person(db):
    return UserFactory(email="pat@example.test")


def test_the_first_browser_of_an_account_sends_nothing_and_is_remembered(person, committed):
    response = sign_in(browser(), person, committed)
    # A brand-new account has no browser to compare with: a notice on every first sign-in
    # would teach people to ignore them.
    assert notices() == []
    [known] = KnownBrowser.objects.filter(user=person)
    assert (known.first_seen_at, known.last_seen_at) == (NOW, NOW)
    cookie = response.cookies[BROWSER_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert bool(cookie["secure"]) is not settings.DEBUG
    assert cookie["max-age"] == 2 * 365 * 24 * 3600
    # The cookie holds a random id, signed; the table keeps only its hash.
    request = HttpRequest()
    request.COOKIES[BROWSER_COOKIE] = cookie.value
    browser_id = browser_id_from_request(request)
    assert len(browser_id) >= 32
    assert person.email not in cookie.value
    # The id, a timestamp and a signature: nothing about the user.
    assert cookie.value.split(":")[0] == browser_id
    assert cookie.value.count(":") == 2
    assert known.browser_hash != browser_id
    assert browser_id not in known.browser_hash


def test_signing_in_again_from_the_same_browser_sends_nothing(person, committed):
    laptop = browser()
    sign_in(laptop, person, committed)
    laptop.post(reverse("account_logout"))
    sign_in(laptop, person, committed, at=NOW + timedelta(days=3))
    assert notices() == []
    [known] = KnownBrowser.objects.filter(user=person)
    assert (known.first_seen_at, known.last_seen_at) == (NOW, NOW + timedelta(days=3))


def test_a_new_browser_gets_one_notice_with_when_what_where_and_a_link(person, committed):
    sign_in(browser(), person, committed)
    phone = browser(SAFARI_IPHONE, "203.0.113.7")
    sign_in(phone, person, committed)
    [notice] = notices()
    assert notice.to == ["pat@example.test"]
    assert notice.subject == f"New sign-in to your {settings.PRODUCT_NAME} account"
    assert "Tuesday 10 March 2026, 09:05 UTC" in notice.body
    assert "2026-03-10T09:05:00+00:00" in notice.body
    assert "Browser: Safari on iPhone" in notice.body
    assert "Address: 203.0.113.7" in notice.body
    assert "If this wasn't you, sign out that session and change your password: " in notice.body
    assert notice.body.rstrip().endswith(f"{settings.SITE_URL}/account/security/")
    [html] = [body for body, kind in notice.alternatives if kind == "text/html"]
    assert "Safari on iPhone" in html
    # The same new browser again: no second notice.
    phone.post(reverse("account_logout"))
    sign_in(phone, person, committed, at=NOW + timedelta(hours=1))
    assert len(notices()) == 1
    assert KnownBrowser.objects.filter(user=person).count() == 2
    # The notice is an account email: no organisation sees it.
    assert OutgoingEmail.objects.get(template="new_signin").organisation is None


def test_a_third_browser_is_new_too(person, committed):
    sign_in(browser(), person, committed)
    sign_in(browser(SAFARI_IPHONE), person, committed)
    sign_in(browser(FIREFOX_WINDOWS), person, committed)
    assert len(notices()) == 2


@pytest.mark.parametrize(
    "cookie",
    [
        "garbled",
        # A validly shaped value signed with another key.
        "abc:1tNq8L:Y6N2pXG3m0lq4h3K8q1m2g9l2xQ",
    ],
)
def test_a_forged_or_garbled_cookie_is_an_unknown_browser(person, committed, cookie):
    sign_in(browser(), person, committed)
    stranger = browser(FIREFOX_WINDOWS)
    stranger.cookies[BROWSER_COOKIE] = cookie
    response = sign_in(stranger, person, committed)
    assert len(notices()) == 1
    # It gets a fresh, valid cookie.
    assert response.cookies[BROWSER_COOKIE].value != cookie


def test_a_browser_known_for_one_user_is_new_for_another(person, committed):
    other = UserFactory(email="sam@example.test")
    shared = browser()
    sign_in(browser(SAFARI_IPHONE), other, committed)  # sam's first browser
    sign_in(shared, person, committed)
    shared.post(reverse("account_logout"))
    sign_in(shared, other, committed)
    [notice] = notices()
    assert notice.to == ["sam@example.test"]


def test_a_forced_sign_in_counts_as_a_browser_too(person, committed):
    # Tests and ops tooling sign in without a browser: the first one is remembered, the next
    # is a new browser (force_login carries no cookie), as for a real one.
    with committed():
        Client().force_login(person)
        Client().force_login(person)
    assert len(notices()) == 1


def test_browsers_unseen_for_two_years_are_forgotten(person):
    KnownBrowser.objects.create(
        user=person,
        browser_hash="a" * 64,
        first_seen_at=NOW - timedelta(days=900),
        last_seen_at=NOW - timedelta(days=730, seconds=1),
    )
    kept = KnownBrowser.objects.create(
        user=person,
        browser_hash="b" * 64,
        first_seen_at=NOW - timedelta(days=900),
        last_seen_at=NOW - timedelta(days=729),
    )
    assert known_browsers_purge(now=NOW) == 1
    assert known_browsers_purge(now=NOW) == 0  # twice: the same result
    assert list(KnownBrowser.objects.all()) == [kept]


def test_the_purge_is_a_scheduled_job(person):
    assert "purge_known_browsers" in {job.name for job in all_jobs()}
    assert purge_known_browsers(now=NOW) == "0 known browser(s) forgotten"


@pytest.mark.django_db(transaction=True)
def test_two_sign_ins_of_a_new_browser_at_once_send_one_notice():
    person = UserFactory(email="pat@example.test")
    signin_record(
        user=person, browser_id="first-browser", user_agent=CHROME_MAC, ip_address=None, now=NOW
    )
    start = threading.Barrier(2)
    results = []

    def sign_in_now():
        try:
            start.wait(10)
            results.append(
                signin_record(
                    user=person,
                    browser_id="second-browser",
                    user_agent=SAFARI_IPHONE,
                    ip_address="203.0.113.7",
                    now=NOW,
                )
            )
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            results.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=sign_in_now) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(map(repr, results)) == ["False", "True"]
    assert OutgoingEmail.objects.filter(template="new_signin").count() == 1
    assert KnownBrowser.objects.filter(user=person).count() == 2
