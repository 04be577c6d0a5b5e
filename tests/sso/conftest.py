import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from accounts.audit import Actor
from sso import saml
from sso.configuration import configuration_for, idp_configure
from sso.domains import domain_add
from sso.views import BROWSER_COOKIE
from tests.sso.idp import TestIdP, authn_request_from_redirect
from tests.subscriptions.factories import SubscriptionFactory, plan


@pytest.fixture(scope="session")
def idp():
    return TestIdP()


@pytest.fixture
def enterprise(org):
    SubscriptionFactory(organisation=org, plan=plan("enterprise"))
    org.refresh_from_db()
    return org


@pytest.fixture
def configured(enterprise, admin, idp):
    """Acme on Enterprise with the test IdP saved and acme.test routed to it."""
    actor = Actor(user=admin)
    idp_configure(
        organisation=enterprise,
        actor=actor,
        idp_type="okta",
        metadata_url="",
        metadata_xml=idp.metadata(),
        now=timezone.now(),
    )
    domain_add(organisation=enterprise, actor=actor, domain="acme.test", now=timezone.now())
    return configuration_for(enterprise)


class SsoBrowser:
    """One browser (a Django test client) going through SP-initiated sign-ins."""

    def __init__(self, client, idp, organisation):
        self.client = client
        self.idp = idp
        self.organisation = organisation

    def start(self, mode="sign_in", organisation=None, next_url=""):
        organisation = organisation or self.organisation
        if mode == "test":
            response = self.client.post(f"/sso/{organisation.slug}/test/")
        else:
            query = f"?next={next_url}" if next_url else ""
            response = self.client.get(f"/sso/{organisation.slug}/login/{query}")
        assert response.status_code == 302, response.content[:500]
        assert response["Location"].startswith(self.idp.sso_url)
        return authn_request_from_redirect(response["Location"])

    def answer(self, request, email="member@acme.test", organisation=None, **kwargs):
        organisation = organisation or self.organisation
        return self.idp.response(
            email=email,
            acs_url=kwargs.pop("acs_url", saml.acs_url(organisation)),
            audience=kwargs.pop("audience", saml.sp_entity_id(organisation)),
            in_response_to=kwargs.pop("in_response_to", request["id"]),
            **kwargs,
        )

    def post(self, saml_response, organisation=None):
        organisation = organisation or self.organisation
        return self.client.post(f"/sso/{organisation.slug}/acs/", {"SAMLResponse": saml_response})

    def sign_in(self, email="member@acme.test", **kwargs):
        request = self.start()
        return self.post(self.answer(request, email=email, **kwargs))

    @property
    def has_state_cookie(self):
        return BROWSER_COOKIE in self.client.cookies


@pytest.fixture
def sso_client(client, idp, configured):
    return SsoBrowser(client, idp, configured.organisation)


@pytest.fixture
def metadata_server():
    """A local HTTP server answering what each test sets in `routes`:
    {path: (status, content_type, body bytes, delay seconds)}."""
    routes = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            status, content_type, body, delay = routes.get(
                self.path, (404, "text/plain", b"not found", 0)
            )
            if delay:
                time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if status in (301, 302):
                self.send_header("Location", body.decode())
                body = b""
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.routes = routes
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()
