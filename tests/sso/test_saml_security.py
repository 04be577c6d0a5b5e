"""SAML attacks and mistakes are refused, with the reason logged: bad or missing signatures,
wrong or missing Audience, Destination, Recipient and Issuer, expiry, unsolicited and replayed
responses, signature wrapping, XML entities and malformed input (docs/sso.md)."""

import pytest
from django.test import Client
from django.utils import timezone

from accounts.audit import Actor
from devkit.saml_idp import SHA1, decode, encode, key_pair
from sso import saml
from sso.configuration import idp_configure
from sso.models import SsoAttempt
from sso.views import BROWSER_COOKIE
from tests.accounts.factories import MembershipFactory, UserFactory
from tests.sso.helpers import SsoBrowser
from tests.subscriptions.factories import SubscriptionFactory, plan

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _member(member):
    return member


def refused(response, sso_client, reason, status=403):
    """The response was refused with `status`, nobody is signed in, and the attempt log holds
    `reason`."""
    assert response.status_code == status, response.content.decode()[:800]
    assert "_auth_user_id" not in sso_client.client.session
    attempt = SsoAttempt.objects.order_by("-id").first()
    assert attempt.outcome == SsoAttempt.Outcome.FAILURE
    assert reason in attempt.reason, attempt.reason
    return attempt


def test_unsigned_assertion(sso_client):
    response = sso_client.sign_in(sign_assertion=False)
    refused(response, sso_client, "not signed")


def test_signed_with_a_key_not_in_the_metadata(sso_client):
    key_pem, cert_pem = key_pair("Impostor")
    response = sso_client.sign_in(key_pem=key_pem, cert_pem=cert_pem)
    refused(response, sso_client, "Signature validation failed")


def test_sha1_signature(sso_client):
    response = sso_client.sign_in(algorithms=SHA1)
    refused(response, sso_client, "Deprecated signature algorithm")


def test_wrong_audience(sso_client):
    response = sso_client.sign_in(audience="https://another-sp.test/metadata")
    refused(response, sso_client, "audience")


def test_missing_audience(sso_client):
    response = sso_client.sign_in(audience=None)
    refused(response, sso_client, "Audience must be")


def test_wrong_destination(sso_client):
    response = sso_client.sign_in(destination="https://another-sp.test/acs")
    refused(response, sso_client, "is addressed to https://another-sp.test/acs")


def test_missing_destination(sso_client):
    response = sso_client.sign_in(destination=None)
    refused(response, sso_client, "has no Destination")


def test_wrong_recipient(sso_client):
    response = sso_client.sign_in(recipient="https://another-sp.test/acs")
    refused(response, sso_client, "Recipient")


def test_missing_recipient(sso_client):
    response = sso_client.sign_in(recipient=None)
    refused(response, sso_client, "Recipient must be")


def test_wrong_issuer(sso_client):
    response = sso_client.sign_in(issuer="https://evil-idp.test/saml")
    refused(response, sso_client, "issuer")


def test_expired_assertion(sso_client):
    response = sso_client.sign_in(minutes_valid=-10)
    refused(response, sso_client, "expired")


def test_unsolicited_idp_initiated_response(sso_client):
    sso_client.start()
    response = sso_client.post(sso_client.answer({"id": None}))
    refused(response, sso_client, "Unsolicited response")


def test_response_to_a_request_we_never_sent(sso_client):
    sso_client.start()
    response = sso_client.post(sso_client.answer({"id": "_made_up_request"}))
    refused(response, sso_client, "did not send")


def test_replayed_response_is_refused(sso_client, member):
    request = sso_client.start()
    saml_response = sso_client.answer(request)
    assert sso_client.post(saml_response).status_code == 302
    # The same browser (its sso_state cookie), signed out, posts the answer again.
    again = SsoBrowser(Client(), sso_client.idp, sso_client.organisation)
    again.client.cookies[BROWSER_COOKIE] = sso_client.client.cookies[BROWSER_COOKIE].value
    response = again.post(saml_response)
    refused(response, again, "already used")


def test_response_from_another_browser_is_refused(sso_client, idp, configured):
    request = sso_client.start()
    saml_response = sso_client.answer(request)
    thief = SsoBrowser(Client(), idp, configured.organisation)
    response = thief.post(saml_response)
    refused(response, thief, "another browser")
    assert thief.post(saml_response).status_code == 403
    # The thief's tries do not spend the sign-in of the browser that started it.
    assert sso_client.post(saml_response).status_code == 302


def test_email_outside_the_domains_and_users(sso_client):
    response = sso_client.sign_in(email="ceo@globex.test")
    attempt = refused(response, sso_client, "outside Acme Trading's SSO domains")
    assert attempt.email == "ceo@globex.test"


def test_response_for_organisation_a_posted_to_bs_acs(sso_client, idp, admin, other_org):
    SubscriptionFactory(organisation=other_org, plan=plan("enterprise"))
    other_org.refresh_from_db()
    outsider = MembershipFactory(organisation=other_org, role="admin").user
    idp_configure(
        organisation=other_org,
        actor=Actor(user=outsider),
        idp_type="custom",
        metadata_url="",
        metadata_xml=idp.metadata(),  # the same IdP serves both organisations
        now=timezone.now(),
    )
    request = sso_client.start()  # for Acme
    # Even built for Globex's ACS and audience, the answer belongs to Acme's request.
    saml_response = sso_client.answer(request, organisation=other_org)
    response = sso_client.post(saml_response, organisation=other_org)
    assert response.status_code == 403
    attempt = SsoAttempt.objects.get(organisation=other_org)
    assert "another organisation" in attempt.reason
    # And Acme's own answer posted to Globex's ACS is refused as well.
    request = sso_client.start()
    response = sso_client.post(sso_client.answer(request), organisation=other_org)
    assert response.status_code == 403
    assert "_auth_user_id" not in sso_client.client.session


def test_signature_wrapping_with_a_second_assertion(sso_client, idp, admin):
    request = sso_client.start()
    legit = decode(sso_client.answer(request, email="member@acme.test"))
    evil = idp.assertion_xml(
        email="admin@acme.test",
        audience=saml.sp_entity_id(sso_client.organisation),
        recipient=saml.acs_url(sso_client.organisation),
        in_response_to=request["id"],
    )
    wrapped = legit.replace("</samlp:Status>", "</samlp:Status>" + evil, 1)
    response = sso_client.post(encode(wrapped))
    refused(response, sso_client, "assertion")


def test_signature_wrapping_moving_the_signed_assertion(sso_client, idp, admin):
    request = sso_client.start()
    legit = decode(sso_client.answer(request, email="member@acme.test"))
    start = legit.index("<saml:Assertion")
    end = legit.index("</saml:Assertion>") + len("</saml:Assertion>")
    signed_assertion = legit[start:end]
    evil = idp.assertion_xml(
        email="admin@acme.test",
        audience=saml.sp_entity_id(sso_client.organisation),
        recipient=saml.acs_url(sso_client.organisation),
        in_response_to=request["id"],
    )
    # The evil assertion takes the signed one's place; the signed one hides in Extensions.
    wrapped = (
        legit[:start].replace(
            "<samlp:Status>",
            f"<samlp:Extensions>{signed_assertion}</samlp:Extensions><samlp:Status>",
        )
        + evil
        + legit[end:]
    )
    response = sso_client.post(encode(wrapped))
    assert response.status_code in (400, 403)
    assert "_auth_user_id" not in sso_client.client.session
    assert SsoAttempt.objects.get().outcome == "failure"


def test_comment_injection_in_the_name_id(sso_client):
    # The IdP signs an address on the attacker's domain; a comment inserted afterwards does
    # not change the signed digest, and a naive reader would stop at "member@acme.test".
    request = sso_client.start()
    xml = decode(
        sso_client.answer(
            request,
            email="member@acme.test.evil.test",
            attributes={"email": ["member@acme.test.evil.test"]},
        )
    )
    injected = xml.replace("member@acme.test.evil.test", "member@acme.test<!---->.evil.test")
    response = sso_client.post(encode(injected))
    attempt = refused(response, sso_client, "outside Acme Trading's SSO domains")
    assert attempt.email == "member@acme.test.evil.test"


def test_dtd_and_external_entities_are_refused_with_400(sso_client):
    request = sso_client.start()
    xml = decode(sso_client.answer(request))
    payload = (
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        + xml.replace("member@acme.test</saml:NameID>", "&xxe;</saml:NameID>", 1)
    )
    response = sso_client.post(encode(payload))
    refused(response, sso_client, "Malformed SAMLResponse", status=400)


def test_billion_laughs_is_refused_with_400(sso_client):
    sso_client.start()
    payload = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        '<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&lol2;</samlp:Response>'
    )
    response = sso_client.post(encode(payload))
    refused(response, sso_client, "Malformed SAMLResponse", status=400)


@pytest.mark.parametrize(
    "saml_response",
    [
        "",
        "%%% not base64 %%%",
        encode("this is not xml"),
        encode("<html><body>Sign-in page</body></html>"),
        encode('<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"'),
        encode("<a/>") * 100_000,
    ],
    ids=["empty", "not-base64", "not-xml", "html", "truncated", "oversized"],
)
def test_malformed_responses_are_400_never_500(sso_client, saml_response):
    sso_client.start()
    response = sso_client.post(saml_response)
    refused(response, sso_client, "Malformed SAMLResponse", status=400)


def test_acs_of_an_organisation_without_sso_is_404(client, org):
    SubscriptionFactory(organisation=org)  # Standard: no SSO
    UserFactory()
    response = client.post("/sso/acme/acs/", {"SAMLResponse": encode("<a/>")})
    assert response.status_code == 404
    assert client.get("/sso/acme/metadata/").status_code == 404
    assert client.get("/sso/acme/login/").status_code == 404
    assert client.get("/sso/nobody/acs/").status_code == 405
    assert client.post("/sso/nobody/acs/").status_code == 404
