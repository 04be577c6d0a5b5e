"""Only what the IdP signed binds a response to our request, and an assertion signs in once.

Each attack goes through the real ACS view with the test IdP. Every refusal is checked for the
status, no session in the attacker's (or anyone's) browser, and the SsoAttempt row with its
reason.
"""

import threading
from urllib.parse import urlsplit

import psycopg
import pytest
from django.db import connection
from django.test import Client

from accounts.models import UserSession as Session
from devkit.saml_idp import decode, encode
from sso import saml
from sso.models import SsoAttempt, SsoRequest
from tests.sso.helpers import SsoBrowser

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _users(member, admin):
    return member, admin


@pytest.fixture
def attacker(idp, configured):
    """Another browser, with its own sso_state cookie, that started its own sign-in."""
    return SsoBrowser(Client(), idp, configured.organisation)


def signed_in_sessions() -> int:
    return sum("_auth_user_id" in s.get_decoded() for s in Session.objects.all())


def refused(response, browser, reason, status=403):
    assert response.status_code == status, response.content.decode()[:800]
    assert "_auth_user_id" not in browser.client.session
    attempt = SsoAttempt.objects.order_by("-id").first()
    assert attempt.outcome == SsoAttempt.Outcome.FAILURE
    assert reason in attempt.reason, attempt.reason
    assert attempt.assertion_id == ""
    return attempt


def signed_assertion(saml_response: str) -> str:
    xml = decode(saml_response)
    start = xml.index("<saml:Assertion")
    return xml[start : xml.index("</saml:Assertion>") + len("</saml:Assertion>")]


def rewrap(assertion: str, *, browser: SsoBrowser, in_response_to) -> str:
    """A new, unsigned Response around `assertion`, naming the attacker's own request."""
    organisation = browser.organisation
    return encode(
        browser.idp.response_xml(
            assertion=assertion,
            destination=saml.acs_url(organisation),
            in_response_to=in_response_to,
        )
    )


def victim_assertion(idp, configured, **kwargs) -> str:
    return signed_assertion(
        idp.response(
            email="admin@acme.test",
            acs_url=saml.acs_url(configured.organisation),
            audience=saml.sp_entity_id(configured.organisation),
            **kwargs,
        )
    )


def test_a_rewrapped_idp_initiated_assertion_is_refused(idp, configured, attacker):
    # IdP-initiated: no InResponseTo anywhere. The attacker names their own pending request.
    stolen = victim_assertion(idp, configured, in_response_to=None)
    request = attacker.start()
    response = attacker.post(rewrap(stolen, browser=attacker, in_response_to=request["id"]))
    refused(response, attacker, "Unsolicited response: the assertion does not answer")
    assert signed_in_sessions() == 0
    # The attacker's request was not spent on it either: nothing was bound.
    assert SsoRequest.objects.get(request_id=request["id"]).used_at is None


def test_a_rewrapped_assertion_without_in_response_to_from_a_real_sign_in_is_refused(
    sso_client, attacker, idp, configured
):
    # An IdP that puts InResponseTo on the Response only. The victim's own sign-in is refused
    # for the same reason: nothing signed ties it to the victim's request either.
    victim_request = sso_client.start()
    legit = sso_client.answer(
        victim_request, email="admin@acme.test", assertion_in_response_to=None
    )
    request = attacker.start()
    response = attacker.post(
        rewrap(signed_assertion(legit), browser=attacker, in_response_to=request["id"])
    )
    refused(response, attacker, "names no single InResponseTo, and only the signed assertion")
    response = sso_client.post(legit)
    refused(response, sso_client, "Unsolicited response: the assertion does not answer")
    assert signed_in_sessions() == 0


def test_a_dropped_outer_signature_does_not_carry_the_binding(
    sso_client, attacker, idp, configured
):
    # The IdP signs the Response (with the victim's request in it) and the assertion, which
    # has no InResponseTo. Dropping the Response's signature and renaming the request is the
    # only way to move the assertion to another request.
    victim_request = sso_client.start()
    legit = sso_client.answer(
        victim_request, email="admin@acme.test", assertion_in_response_to=None, sign_response=True
    )
    assert decode(legit).count("<ds:SignatureValue>") == 2
    request = attacker.start()
    response = attacker.post(
        rewrap(signed_assertion(legit), browser=attacker, in_response_to=request["id"])
    )
    refused(response, attacker, "Unsolicited response: the assertion does not answer")
    assert signed_in_sessions() == 0


def test_an_assertion_that_names_another_request_is_refused_whatever_the_response_says(
    sso_client, attacker, idp, configured
):
    victim_request = sso_client.start()
    legit = sso_client.answer(victim_request, email="admin@acme.test")
    request = attacker.start()
    response = attacker.post(
        rewrap(signed_assertion(legit), browser=attacker, in_response_to=request["id"])
    )
    attempt = refused(response, attacker, "The assertion does not answer this sign-in request")
    assert victim_request["id"] in attempt.reason
    assert request["id"] in attempt.reason
    # Without an InResponseTo on the Response, the assertion's request is the victim's,
    # started in another browser.
    response = attacker.post(rewrap(signed_assertion(legit), browser=attacker, in_response_to=None))
    refused(response, attacker, "another browser")
    # And the victim's own sign-in still works: the attacker's tries did not spend it.
    assert sso_client.post(legit).status_code == 302
    assert signed_in_sessions() == 1


def test_the_signed_assertion_is_what_counts_after_validation(sso_client, idp, configured):
    # The signed assertion names our request, but the (unsigned) Response claims another.
    request = sso_client.start()
    saml_response = decode(sso_client.answer(request))
    forged = saml_response.replace(
        f'InResponseTo="{request["id"]}">', 'InResponseTo="_someone_elses">', 1
    )
    assert forged != saml_response
    response = sso_client.post(encode(forged))
    refused(response, sso_client, "the Response element names _someone_elses")


@pytest.mark.parametrize("same_browser", [True, False], ids=["same-browser", "other-browser"])
def test_a_reused_assertion_id_is_refused_as_replayed(sso_client, idp, configured, same_browser):
    first = sso_client.start()
    assert sso_client.post(sso_client.answer(first, assertion_id="_reused")).status_code == 302
    browser = sso_client if same_browser else SsoBrowser(Client(), idp, configured.organisation)
    if same_browser:
        sso_client.client.logout()
    request = browser.start()
    # A correctly signed answer to the new request, carrying a consumed assertion ID.
    response = browser.post(browser.answer(request, assertion_id="_reused"))
    attempt = refused(response, browser, "already used (replayed)")
    assert attempt.email == "member@acme.test"
    assert SsoAttempt.objects.filter(outcome="success").count() == 1


def test_a_victim_signing_in_after_an_attacker_replayed_the_assertion_id_gets_a_403(
    sso_client, idp, configured, attacker
):
    request = attacker.start()
    assert attacker.post(attacker.answer(request, assertion_id="_stolen_id")).status_code == 302
    attacker.client.logout()
    victim_request = sso_client.start()
    response = sso_client.post(sso_client.answer(victim_request, assertion_id="_stolen_id"))
    refused(response, sso_client, "replayed")
    assert "replayed" in response.content.decode()


def test_a_response_signed_as_well_as_its_assertion_signs_in(sso_client, member):
    request = sso_client.start()
    saml_response = sso_client.answer(request, sign_response=True)
    assert decode(saml_response).count("<ds:SignatureValue>") == 2
    assert sso_client.post(saml_response).status_code == 302
    assert sso_client.client.session["_auth_user_id"] == str(member.pk)


def test_the_name_id_alone_signs_in(sso_client, member, configured):
    request = sso_client.start()
    response = sso_client.post(
        sso_client.answer(request, email="member@acme.test", name_id_only=True)
    )
    assert response.status_code == 302
    assert sso_client.client.session["_auth_user_id"] == str(member.pk)
    attempt = SsoAttempt.objects.get()
    assert (attempt.outcome, attempt.email, attempt.attributes) == (
        "success",
        "member@acme.test",
        {},
    )


def test_a_name_id_alone_outside_the_domains_is_refused(sso_client):
    request = sso_client.start()
    response = sso_client.post(
        sso_client.answer(request, email="someone@elsewhere.test", name_id_only=True)
    )
    refused(response, sso_client, "outside Acme Trading's SSO domains")


def test_an_expired_subject_confirmation_names_the_expiry_not_the_recipient(sso_client):
    # Two minutes late: inside the Conditions' clock drift, past the confirmation's end.
    request = sso_client.start()
    response = sso_client.post(sso_client.answer(request, minutes_valid=-2))
    attempt = refused(response, sso_client, "No valid SubjectConfirmation: it expired at")
    assert "Recipient" not in attempt.reason
    assert "Check the clocks" in attempt.reason


def test_a_wrong_recipient_names_the_recipient(sso_client):
    request = sso_client.start()
    response = sso_client.post(sso_client.answer(request, recipient="https://other.test/acs"))
    refused(response, sso_client, "got https://other.test/acs")


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_of_one_response_sign_in_once(client, idp, configured, member):
    browser = SsoBrowser(client, idp, configured.organisation)
    saml_response = browser.answer(browser.start())
    cookies = {name: morsel.value for name, morsel in client.cookies.items()}
    acs_path = urlsplit(saml.acs_url(configured.organisation)).path
    results, barrier = [], threading.Barrier(4)

    def post():
        poster = Client()
        for name, value in cookies.items():
            poster.cookies[name] = value
        barrier.wait()
        try:
            results.append(poster.post(acs_path, {"SAMLResponse": saml_response}))
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in results) == [302, 403, 403, 403]
    assert signed_in_sessions() == 1
    attempts = SsoAttempt.objects.order_by("id")
    assert [a.outcome for a in attempts].count("success") == 1
    failures = [a for a in attempts if a.outcome == "failure"]
    assert len(failures) == 3
    assert all("replayed" in a.reason for a in failures), [a.reason for a in failures]


@pytest.mark.django_db(transaction=True)
def test_an_assertion_id_consumed_concurrently_is_refused_not_a_500(
    client, idp, configured, member
):
    """Another sign-in holds the assertion ID, uncommitted, while this one checks it: the
    check sees nothing, the insert waits on the unique index and then fails; the refusal is
    still written."""
    browser = SsoBrowser(client, idp, configured.organisation)
    saml_response = browser.answer(browser.start(), assertion_id="_racing")
    db = connection.settings_dict
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "dbname": db["NAME"]}
    other = psycopg.connect(**params, autocommit=False)
    # Statistics views are a snapshot per transaction: watch from outside `other`'s.
    watcher = psycopg.connect(**params, autocommit=True)
    other.execute(
        "INSERT INTO sso_ssoattempt (public_id, organisation_id, mode, outcome, reason, email,"
        " name_id, attributes, assertion_id, ip_address, created_at)"
        " VALUES (gen_random_uuid(), %s, 'sign_in', 'success', '', '', '', '{}', '_racing',"
        " NULL, now())",
        [configured.organisation_id],
    )
    results = []
    thread = threading.Thread(target=lambda: results.append(browser.post(saml_response)))
    thread.start()
    try:
        # Wait until the ACS is blocked on the other transaction's row.
        waiting = 0
        for _ in range(200):
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ).fetchone()[0]
            if waiting or not thread.is_alive():
                break
            thread.join(0.05)
        assert waiting, [(r.status_code, r.content.decode()[:800]) for r in results]
        other.commit()
    finally:
        thread.join(30)
        other.close()
        watcher.close()
    assert results[0].status_code == 403
    assert "_auth_user_id" not in client.session
    refusal = SsoAttempt.objects.filter(outcome="failure").get()
    assert "already used (replayed)" in refusal.reason
    assert SsoAttempt.objects.filter(outcome="success").count() == 1
