"""Daily SSO jobs: metadata refresh with certificate rollover, certificate-expiry emails."""

from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from accounts.audit import Actor
from devkit.saml_idp import TestIdP, key_pair
from sso.attempts import housekeeping
from sso.certificates import certificate_expiry_notify, metadata_refresh_due
from sso.configuration import configuration_for, idp_configure
from sso.domains import domain_add
from sso.models import SsoAttempt, SsoConfiguration, SsoRequest
from tests.sso.helpers import SsoBrowser

pytestmark = pytest.mark.django_db


@pytest.fixture
def from_url(enterprise, admin, idp, metadata_server):
    metadata_server.routes["/metadata"] = (200, "application/xml", idp.metadata().encode(), 0)
    idp_configure(
        organisation=enterprise,
        actor=Actor(user=admin),
        idp_type="okta",
        metadata_url=metadata_server.url + "/metadata",
        metadata_xml="",
        now=timezone.now(),
    )
    domain_add(
        organisation=enterprise, actor=Actor(user=admin), domain="acme.test", now=timezone.now()
    )
    return configuration_for(enterprise)


def test_rollover_certificate_is_accepted_alongside_the_old_one(
    from_url, idp, metadata_server, client, member
):
    new_key, new_cert = key_pair("Test IdP (new)")
    metadata_server.routes["/metadata"] = (
        200,
        "application/xml",
        idp.metadata(extra_cert_pems=[new_cert]).encode(),
        0,
    )
    later = timezone.now() + timedelta(days=1)
    assert metadata_refresh_due(now=later) == {"refreshed": 1, "failed": 0}
    from_url.refresh_from_db()
    assert len(from_url.idp_certificates) == 2
    browser = SsoBrowser(client, idp, from_url.organisation)
    # Signed with the old key and with the new one: both sign in.
    assert browser.sign_in(email="member@acme.test").status_code == 302
    client.logout()
    assert (
        browser.sign_in(email="member@acme.test", key_pem=new_key, cert_pem=new_cert).status_code
        == 302
    )


def test_refresh_runs_once_a_day(from_url):
    now = timezone.now()
    assert metadata_refresh_due(now=now + timedelta(hours=1)) == {
        "refreshed": 0,
        "failed": 0,
    }
    assert metadata_refresh_due(now=now + timedelta(hours=21))["refreshed"] == 1


def test_failed_refresh_keeps_the_last_good_metadata_and_says_why(
    from_url, metadata_server, client_for, admin
):
    before = from_url.idp_certificates
    metadata_server.routes["/metadata"] = (500, "text/plain", b"boom", 0)
    assert metadata_refresh_due(now=timezone.now() + timedelta(days=1))["failed"] == 1
    from_url.refresh_from_db()
    assert from_url.idp_certificates == before
    assert "HTTP 500" in from_url.metadata_refresh_error
    page = client_for(admin).get("/o/acme/settings/sso/").content.decode()
    assert "The daily metadata refresh failed" in page


def test_a_different_idp_behind_the_url_is_not_taken_silently(from_url, metadata_server):
    impostor = TestIdP("https://somebody-else.test/saml")
    metadata_server.routes["/metadata"] = (200, "application/xml", impostor.metadata().encode(), 0)
    metadata_refresh_due(now=timezone.now() + timedelta(days=1))
    from_url.refresh_from_db()
    assert from_url.idp_entity_id != impostor.entity_id
    assert impostor.cert_pem.split("\n")[1] not in str(from_url.idp_certificates)
    assert "different IdP" in from_url.metadata_refresh_error


def test_certificate_expiry_email_30_days_before_once(enterprise, admin, committed):
    expires = datetime.now(UTC) + timedelta(days=45)
    idp = TestIdP(not_after=expires)
    idp_configure(
        organisation=enterprise,
        actor=Actor(user=admin),
        idp_type="custom",
        metadata_url="",
        metadata_xml=idp.metadata(),
        now=timezone.now(),
    )
    with committed():
        assert certificate_expiry_notify(now=expires - timedelta(days=31)) == 0
        assert certificate_expiry_notify(now=expires - timedelta(days=30)) == 1
        assert certificate_expiry_notify(now=expires - timedelta(days=29)) == 0
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["admin@acme.test"]
    assert "SSO signing certificate expires on" in message.subject
    assert "/o/acme/settings/sso/" in message.body


def test_tick_runs_the_sso_jobs(from_url, capsys):
    call_command(
        "tick",
        "--now",
        (timezone.now() + timedelta(days=1)).isoformat(),
        "--job",
        "sso_metadata_refresh",
    )
    assert "1 IdP metadata refreshed" in capsys.readouterr().out


def test_housekeeping_forgets_old_requests_and_attempts(configured, sso_client):
    sso_client.sign_in(email="nobody@nowhere.test")
    later = timezone.now() + timedelta(days=91)
    assert housekeeping(now=later) == {"requests": 1, "attempts": 1}
    assert not SsoRequest.objects.exists()
    assert not SsoAttempt.objects.exists()
    assert SsoConfiguration.objects.filter(pk=configured.pk).exists()
