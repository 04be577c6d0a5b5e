"""Settings > SSO: SP details first, IdP metadata by XML or URL with every bad input refused,
domains, and the Enterprise gate."""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from accounts.models import AuditEvent
from devkit.saml_idp import TestIdP, key_pair
from sso.models import SsoConfiguration, SsoDomain
from tests.subscriptions.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db


def config_state(org):
    config = SsoConfiguration.objects.filter(organisation=org).first()
    if config is None:
        return None
    return (
        config.idp_entity_id,
        config.idp_sso_url,
        [c["fingerprint"] for c in config.idp_certificates],
        config.metadata_url,
        config.tested_at,
        config.enforced,
    )


def test_sp_details_are_there_before_anything_is_configured(client_for, admin, enterprise):
    response = client_for(admin).get("/o/acme/settings/sso/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "http://127.0.0.1:8000/sso/acme/metadata/" in body  # Entity ID
    assert "http://127.0.0.1:8000/sso/acme/acs/" in body  # ACS URL
    assert 'data-copy="sp-acs-url"' in body
    assert "Not configured" in body
    assert "WARNING:" in body
    assert "Keep a backup admin account with password login" in body
    metadata = client_for(admin).get("/sso/acme/metadata/")
    assert metadata.status_code == 200
    assert metadata["Content-Type"] == "application/samlmetadata+xml"
    xml = metadata.content.decode()
    assert 'entityID="http://127.0.0.1:8000/sso/acme/metadata/"' in xml
    assert 'Location="http://127.0.0.1:8000/sso/acme/acs/"' in xml


def test_save_pasted_metadata_shows_what_was_found(client_for, admin, enterprise, idp):
    client = client_for(admin)
    response = client.post(
        "/o/acme/settings/sso/identity-provider/",
        {"idp_type": "azure_ad", "metadata_url": "", "metadata_xml": idp.metadata()},
    )
    assert response.status_code == 302
    config = SsoConfiguration.objects.get(organisation=enterprise)
    assert config.idp_entity_id == idp.entity_id
    assert config.idp_sso_url == idp.sso_url
    assert len(config.idp_certificates) == 1
    body = client.get(response["Location"]).content.decode()
    assert idp.entity_id in body
    assert "Test IdP" in body
    assert "Saved, not tested" in body
    assert AuditEvent.objects.filter(organisation=enterprise, action="sso.idp_configured").exists()


def _save(client, **data):
    return client.post(
        "/o/acme/settings/sso/identity-provider/",
        {"idp_type": "custom", "metadata_url": "", "metadata_xml": "", **data},
    )


def expired_idp():
    past = datetime.now(UTC) - timedelta(days=400)
    return TestIdP(not_before=past, not_after=past + timedelta(days=30))


@pytest.mark.parametrize(
    ("metadata_xml", "message"),
    [
        ("this is not xml", "is not valid XML"),
        ("<html><body>Okta sign in</body></html>", "HTML page, not SAML metadata"),
        (
            '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
            "DTD or entities",
        ),
        ("<a/>", "no IdP EntityDescriptor"),
        ("NO_SIGNING_CERT", "no signing certificate"),
        ("EXPIRED", "Every signing certificate in the metadata has expired"),
        ("", "Enter the IdP metadata URL or paste its XML"),
    ],
    ids=["not-xml", "html", "xxe", "no-idp", "no-cert", "expired", "empty"],
)
def test_bad_metadata_is_refused_and_nothing_changes(
    client_for, admin, configured, idp, metadata_xml, message
):
    if metadata_xml == "NO_SIGNING_CERT":
        metadata_xml = TestIdP("https://other-idp.test").metadata(with_signing_cert=False)
    elif metadata_xml == "EXPIRED":
        metadata_xml = expired_idp().metadata()
    before = config_state(configured.organisation)
    response = _save(client_for(admin), metadata_xml=metadata_xml)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert config_state(configured.organisation) == before


def test_an_expired_certificate_next_to_a_valid_one_is_dropped_with_a_warning(
    client_for, admin, enterprise, idp
):
    old = expired_idp()
    response = _save(client_for(admin), metadata_xml=idp.metadata(extra_cert_pems=[old.cert_pem]))
    assert response.status_code == 302
    config = SsoConfiguration.objects.get(organisation=enterprise)
    assert len(config.idp_certificates) == 1
    page = client_for(admin).get("/o/acme/settings/sso/").content.decode()
    assert "Ignored a signing certificate that expired" in page


def test_certificate_expiring_within_30_days_shows_a_warning(client_for, admin, enterprise):
    soon = TestIdP(not_after=datetime.now(UTC) + timedelta(days=20))
    assert _save(client_for(admin), metadata_xml=soon.metadata()).status_code == 302
    page = client_for(admin).get("/o/acme/settings/sso/").content.decode()
    assert "expires on" in page
    assert "in 19 days" in page or "in 20 days" in page


def test_metadata_url_is_fetched(client_for, admin, enterprise, idp, metadata_server):
    metadata_server.routes["/app/metadata"] = (
        200,
        "application/samlmetadata+xml",
        idp.metadata().encode(),
        0,
    )
    response = _save(client_for(admin), metadata_url=metadata_server.url + "/app/metadata")
    assert response.status_code == 302
    config = SsoConfiguration.objects.get(organisation=enterprise)
    assert config.idp_entity_id == idp.entity_id
    assert config.metadata_url.endswith("/app/metadata")
    assert config.metadata_refreshed_at is not None


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ((404, "text/plain", b"nope", 0), "answered HTTP 404"),
        ((200, "text/html", b"<html><body>Sign in</body></html>", 0), "HTML page"),
        ((200, "application/xml", b"x" * 1_100_000, 0), "more than 1 MB"),
        ((200, "application/xml", b"not xml at all", 0), "is not valid XML"),
        ((200, "application/xml", b"<a/>", 6), "did not answer in time"),
    ],
    ids=["404", "html", "too-big", "not-xml", "slow"],
)
def test_bad_metadata_urls_are_refused_and_nothing_changes(
    client_for, admin, configured, metadata_server, route, message
):
    metadata_server.routes["/metadata"] = route
    before = config_state(configured.organisation)
    response = _save(client_for(admin), metadata_url=metadata_server.url + "/metadata")
    assert response.status_code == 400
    assert message in response.content.decode()
    assert config_state(configured.organisation) == before


def test_a_url_that_does_not_answer(client_for, admin, configured):
    before = config_state(configured.organisation)
    response = _save(client_for(admin), metadata_url="http://127.0.0.1:9/metadata")
    assert response.status_code == 400
    assert "could not be reached" in response.content.decode()
    assert config_state(configured.organisation) == before


@override_settings(SSO_METADATA_ALLOW_PRIVATE_URLS=False)
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1/metadata", "private, loopback or link-local address (127.0.0.1)"),
        ("https://localhost/metadata", "private, loopback or link-local"),
        ("https://10.1.2.3/metadata", "private, loopback or link-local address (10.1.2.3)"),
        ("https://192.168.0.10/metadata", "private, loopback or link-local"),
        ("https://169.254.169.254/latest/meta-data", "private, loopback or link-local"),
        ("https://[::1]/metadata", "private, loopback or link-local"),
        ("http://idp.example.com/metadata", "must be an https:// address"),
        ("file:///etc/passwd", "Enter a valid URL"),
    ],
)
def test_metadata_urls_to_internal_addresses_are_refused(
    client_for, admin, configured, url, message
):
    before = config_state(configured.organisation)
    response = _save(client_for(admin), metadata_url=url)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert config_state(configured.organisation) == before


@override_settings(SSO_METADATA_ALLOW_PRIVATE_URLS=False)
def test_a_plain_http_sign_in_url_is_refused_outside_development(client_for, admin, configured):
    before = config_state(configured.organisation)
    plain = TestIdP("https://plain-idp.test", sso_url="http://idp.example.com/sso")
    response = _save(client_for(admin), metadata_xml=plain.metadata())
    assert response.status_code == 400
    assert "SingleSignOnService must be an https:// URL" in response.content.decode()
    assert config_state(configured.organisation) == before


def test_url_and_xml_together_are_refused(client_for, admin, configured, idp):
    response = _save(
        client_for(admin), metadata_url="https://idp.example.com/m", metadata_xml=idp.metadata()
    )
    assert response.status_code == 400
    assert "not both" in response.content.decode()


def test_new_idp_clears_the_test_and_enforcement_but_a_certificate_rollover_does_not(
    client_for, admin, configured, idp
):
    SsoConfiguration.objects.filter(pk=configured.pk).update(
        tested_at=timezone.now(), enforced=True, backup_admin=admin
    )
    # Same IdP, a second certificate published (rollover): test and enforcement stay.
    _key, new_cert = key_pair("Test IdP 2027")
    assert (
        _save(client_for(admin), metadata_xml=idp.metadata(extra_cert_pems=[new_cert])).status_code
        == 302
    )
    configured.refresh_from_db()
    assert configured.enforced
    assert configured.tested_at is not None
    assert len(configured.idp_certificates) == 2
    # Another IdP: it has to be tested again before it may be enforced.
    other = TestIdP("https://login.other-idp.test/saml")
    assert _save(client_for(admin), metadata_xml=other.metadata()).status_code == 302
    configured.refresh_from_db()
    assert not configured.enforced
    assert configured.tested_at is None


# Domains ----------------------------------------------------------------------------------


def test_domains_are_added_and_removed(client_for, admin, enterprise):
    client = client_for(admin)
    assert (
        client.post("/o/acme/settings/sso/domains/", {"domain": "@Acme-Trading.COM"}).status_code
        == 302
    )
    claim = SsoDomain.objects.get(organisation=enterprise)
    assert claim.domain == "acme-trading.com"
    assert client.post(f"/o/acme/settings/sso/domains/{claim.public_id}/remove/").status_code == 302
    assert not SsoDomain.objects.exists()
    actions = set(
        AuditEvent.objects.filter(organisation=enterprise).values_list("action", flat=True)
    )
    assert {"sso.domain_added", "sso.domain_removed"} <= actions


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("globex.test", "already used for SSO by another organisation"),
        ("acme.test", "already in your list"),
        ("gmail.com", "public email provider"),
        ("not a domain", "Enter a domain like example.com"),
        ("https://acme.test/", "Enter a domain like example.com"),
    ],
)
def test_bad_domains_are_refused(client_for, admin, configured, other_org, domain, message):
    SsoDomain.objects.create(organisation=other_org, domain="globex.test")
    before = sorted(SsoDomain.objects.values_list("organisation_id", "domain"))
    response = client_for(admin).post("/o/acme/settings/sso/domains/", {"domain": domain})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert sorted(SsoDomain.objects.values_list("organisation_id", "domain")) == before


def test_another_organisations_domain_cannot_be_removed(client_for, admin, configured, other_org):
    theirs = SsoDomain.objects.create(organisation=other_org, domain="globex.test")
    response = client_for(admin).post(f"/o/acme/settings/sso/domains/{theirs.public_id}/remove/")
    assert response.status_code == 404
    assert SsoDomain.objects.filter(pk=theirs.pk).exists()


# Who can open the page ---------------------------------------------------------------------


def test_non_enterprise_organisation_sees_what_sso_needs_and_cannot_configure(
    client_for, admin, org, idp
):
    SubscriptionFactory(organisation=org)  # Standard
    client = client_for(admin)
    page = client.get("/o/acme/settings/sso/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "part of the Enterprise plan" in body
    assert "Upgrade to Enterprise" in body
    assert "identity-provider" not in body
    for url, data in [
        (
            "/o/acme/settings/sso/identity-provider/",
            {"idp_type": "okta", "metadata_xml": idp.metadata()},
        ),
        ("/o/acme/settings/sso/domains/", {"domain": "acme.test"}),
        ("/o/acme/settings/sso/new-users/", {"provision_users": "on", "provision_role": "member"}),
        ("/o/acme/settings/sso/enforcement/", {"enforced": "on"}),
    ]:
        assert client.post(url, data).status_code == 403, url
    assert not SsoDomain.objects.exists()
    assert not SsoConfiguration.objects.exclude(idp_entity_id="").exists()


@pytest.mark.parametrize("role", ["member", "billing_user"])
def test_only_admins_open_sso_settings(client_for, enterprise, role, request):
    user = request.getfixturevalue(role)
    assert client_for(user).get("/o/acme/settings/sso/").status_code == 403
    assert (
        client_for(user).post("/o/acme/settings/sso/domains/", {"domain": "x.test"}).status_code
        == 403
    )


def test_attempt_log_lists_the_last_twenty(client_for, admin, sso_client, member):
    for _ in range(21):
        sso_client.sign_in(email="stranger@nowhere.test")
    sso_client.sign_in(email="member@acme.test")
    page = client_for(admin).get("/o/acme/settings/sso/").content.decode()
    assert page.count("<tr>") == 21  # header + 20 rows
    assert "Succeeded" in page
    assert "outside Acme Trading" in page
