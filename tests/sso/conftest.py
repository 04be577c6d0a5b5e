import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from accounts.audit import Actor
from devkit.saml_idp import TestIdP
from sso.configuration import configuration_for, idp_configure
from sso.domains import domain_add
from tests.sso.helpers import SsoBrowser
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
