"""Request ids, JSON log lines, /healthz and failed Celery tasks."""

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.db import connections
from django.http import HttpResponse
from django.urls import reverse

from accounts.emails import email_queue
from accounts.tenancy import tenant_view
from billing import documents as billing_documents
from billing.tasks import render_invoice_documents
from core import health
from core.observability import (
    JsonFormatter,
    LogContextFilter,
    PlainFormatter,
    RequestIdMiddleware,
    log_context,
)
from core.tasks import run_scheduled_job
from tests.accounts.factories import InvitationFactory
from tests.billing.factories import issued_invoice

pytestmark = pytest.mark.django_db

GENERATED_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def log_lines():
    """What the production console handler writes (context filter + JSON), parsed per line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(LogContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def closed_port() -> int:
    """A local port nothing listens on (just released by the OS)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lines_of(lines, logger):
    return [line for line in lines if line["logger"] == logger]


# Request id --------------------------------------------------------------------------------------


def test_a_request_without_an_id_gets_a_new_one_in_the_response(client):
    first = client.get("/healthz")["X-Request-ID"]
    second = client.get("/healthz")["X-Request-ID"]
    assert GENERATED_ID.fullmatch(first)
    assert GENERATED_ID.fullmatch(second)
    assert first != second


def test_the_proxys_request_id_is_kept(client):
    response = client.get("/healthz", headers={"X-Request-ID": "edge-7f3a9c21:42"})
    assert response["X-Request-ID"] == "edge-7f3a9c21:42"


@pytest.mark.parametrize(
    "inbound",
    ["short", "x" * 129, "has a space 1234", 'quote"12345678', "line\nbreak12345", "é" * 10],
)
def test_an_insane_inbound_id_is_replaced(client, inbound):
    response = client.get("/healthz", HTTP_X_REQUEST_ID=inbound)
    assert GENERATED_ID.fullmatch(response["X-Request-ID"])


def test_every_line_of_a_request_carries_its_id(client, log_lines, settings):
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{closed_port()}"}
    }
    response = client.get("/healthz", headers={"X-Request-ID": "req-0001-abcd"})
    assert response.status_code == 503
    lines = log_lines()
    assert [(line["logger"], line["request_id"]) for line in lines] == [
        ("core.health", "req-0001-abcd"),  # logged inside the view
        ("billing_portal.request", "req-0001-abcd"),  # the access line
        ("django.request", "req-0001-abcd"),  # Django's, after the middleware returned
    ]
    # Once the response is closed, lines belong to no request.
    logging.getLogger("tests").warning("after the request")
    assert log_lines()[-1]["request_id"] is None


def test_the_access_line_says_who_asked_what_and_how_it_went(client_for, org, admin, log_lines):
    url = reverse("billing:invoices", args=[org.slug])
    response = client_for(admin).get(url, headers={"X-Request-ID": "req-0002-abcd"})
    assert response.status_code == 200
    [line] = lines_of(log_lines(), "billing_portal.request")
    assert isinstance(line.pop("duration_ms"), float)
    assert line.pop("timestamp").endswith("Z")
    assert line == {
        "level": "INFO",
        "logger": "billing_portal.request",
        "message": line["message"],
        "request_id": "req-0002-abcd",
        "organisation_id": org.pk,
        "user_id": admin.pk,
        "method": "GET",
        "path": f"/o/{org.slug}/settings/billing/invoices/",
        "status": 200,
    }
    assert re.fullmatch(rf"GET {re.escape(url)} 200 \d+ms", line["message"])


def test_lines_logged_inside_an_organisation_page_name_the_organisation(rf, org, admin, log_lines):
    @tenant_view()
    def page(request):
        logging.getLogger("tests").info("inside the page")
        return HttpResponse("ok")

    request = rf.get("/")
    request.user = admin
    request.session = SessionStore()
    assert page(request, org_slug=org.slug).status_code == 200
    [line] = lines_of(log_lines(), "tests")
    assert line["organisation_id"] == org.pk
    logging.getLogger("tests").info("after the page")
    assert "organisation_id" not in lines_of(log_lines(), "tests")[-1]


def test_tokens_in_urls_are_not_logged(client, org, log_lines):
    invitation = InvitationFactory(organisation=org)
    client.get(reverse("accounts:invitation_accept", args=[invitation.token]))
    [line] = lines_of(log_lines(), "billing_portal.request")
    assert line["path"] == "/invitations/[redacted]/"
    assert invitation.token not in json.dumps(log_lines())


def test_a_healthy_probe_is_not_logged(client, log_lines):
    assert client.get("/healthz").status_code == 200
    assert log_lines() == []


def test_the_middleware_comes_first():
    from django.conf import settings

    assert settings.MIDDLEWARE[0] == f"{RequestIdMiddleware.__module__}.RequestIdMiddleware"


# Formatters ------------------------------------------------------------------------------------


def record(message="Invoice %s rendered", args=("INV-2026-000001",), exc_info=None, **extra):
    entry = logging.LogRecord("billing.services", logging.WARNING, __file__, 1, message, args, None)
    entry.exc_info = exc_info
    entry.__dict__.update(extra)
    return entry


def test_a_json_line_parses_and_holds_the_fields():
    try:
        raise ValueError("bad PDF")
    except ValueError:
        exc_info = sys.exc_info()
    line = JsonFormatter().format(
        record(exc_info=exc_info, request_id="req-1", organisation_id=7, invoice_id=9, other="x")
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("timestamp"))
    assert entry.pop("exc_info").endswith("ValueError: bad PDF")
    assert entry == {
        "level": "WARNING",
        "logger": "billing.services",
        "message": "Invoice INV-2026-000001 rendered",
        "request_id": "req-1",
        "organisation_id": 7,
        "invoice_id": 9,
    }


def test_a_line_outside_a_request_has_a_null_request_id():
    entry = json.loads(JsonFormatter().format(record()))
    assert entry["request_id"] is None
    assert "exc_info" not in entry


def test_the_development_line_is_readable_and_shows_the_request_id():
    formatter = PlainFormatter()
    assert formatter.format(record(request_id="req-1")).endswith(
        " WARNING billing.services [req-1] Invoice INV-2026-000001 rendered"
    )
    assert " [-] " in formatter.format(record())


def test_json_in_production_plain_in_development():
    code = (
        "from billing_portal import settings as s; "
        "print(s.LOG_FORMAT, s.LOGGING['handlers']['console']['formatter'])"
    )
    production = {
        "DEBUG": "0",
        "SECRET_KEY": "x" * 64,
        "ALLOWED_HOSTS": "portal.example.com",
        "DJANGO_SETTINGS_MODULE": "billing_portal.settings",
    }
    env = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}

    def run(**changes):
        return subprocess.run(
            [sys.executable, "-c", code],
            env={**env, **production, **changes},
            capture_output=True,
            text=True,
            check=False,
        )

    assert run().stdout.strip() == "json json"
    assert run(DEBUG="1").stdout.strip() == "plain plain"
    assert run(LOG_FORMAT="plain").stdout.strip() == "plain plain"
    assert "LOG_FORMAT must be json or plain, not 'xml'." in run(LOG_FORMAT="xml").stderr


# /healthz -----------------------------------------------------------------------------------------


def test_healthz_is_ok_when_postgres_and_redis_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "postgres": True,
        "redis": True,
    }
    assert all(isinstance(check["ms"], float) for check in body["checks"].values())
    # No session, no CSRF cookie, never cached by a proxy.
    assert response.cookies == {}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_is_503_when_redis_is_unreachable(client, settings):
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{closed_port()}"}
    }
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["postgres"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"] == "ConnectionError"


def test_healthz_is_503_when_postgres_is_unreachable(client, monkeypatch):
    # A second connection with the test database's settings but a port nothing listens on,
    # put where the view looks: a real connection attempt that fails, the shared server untouched.
    default = connections["default"]
    unreachable = default.__class__(
        {**default.settings_dict, "PORT": str(closed_port())}, alias="default"
    )
    monkeypatch.setattr(health, "connections", {"default": unreachable})
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["postgres"] == {
        "ok": False,
        "error": "OperationalError",
        "ms": body["checks"]["postgres"]["ms"],
    }
    assert body["checks"]["redis"]["ok"] is True


def test_healthz_accepts_only_get_and_head(client):
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


# Celery task failures ----------------------------------------------------------------------------
# Tasks run eagerly in tests and CELERY_TASK_EAGER_PROPAGATES re-raises before Celery's failure
# handling; apply(throw=False) goes through that handling (and sends task_failure) as a worker does.


def failure_lines(lines):
    return lines_of(lines, "billing_portal.tasks")


def test_a_failed_pdf_task_logs_the_organisation_and_the_invoice(org, log_lines, monkeypatch):
    fine = issued_invoice(organisation=org)
    broken = issued_invoice(organisation=org)

    def render(*, invoice, now):
        if invoice.pk == broken.pk:
            raise RuntimeError("renderer crashed")

    monkeypatch.setattr("billing.tasks.invoice_document_original", render)
    result = render_invoice_documents.apply(args=[[fine.pk, broken.pk]], throw=False)
    assert result.failed()

    [line] = failure_lines(log_lines())
    assert line["level"] == "ERROR"
    assert line["message"] == (
        f"Task billing.render_invoice_documents failed (organisation_id={org.pk}, "
        f"invoice_id={broken.pk}): RuntimeError: renderer crashed"
    )
    assert line["task_name"] == "billing.render_invoice_documents"
    assert GENERATED_ID.fullmatch(line["task_id"].replace("-", ""))
    assert line["request_id"] == line["task_id"]  # the task id plays the request id
    assert line["task_args"] == repr((([fine.pk, broken.pk],), {}))
    assert line["organisation_id"] == org.pk
    assert line["invoice_id"] == broken.pk
    assert line["exc_info"].endswith("RuntimeError: renderer crashed")


def test_a_failed_scheduled_job_logs_the_invoice_it_failed_on(org, log_lines, monkeypatch):
    invoice = issued_invoice(organisation=org)

    def job(name, *, now):
        with log_context(organisation_id=org.pk, invoice_id=invoice.pk):
            raise RuntimeError("renderer crashed")

    monkeypatch.setattr("core.tasks.run_job", job)
    assert run_scheduled_job.apply(args=["render_invoice_pdfs"], throw=False).failed()

    [line] = failure_lines(log_lines())
    assert line["task_name"] == "billing_portal.run_scheduled_job"
    assert line["job"] == "render_invoice_pdfs"
    assert line["organisation_id"] == org.pk
    assert line["invoice_id"] == invoice.pk
    assert line["message"] == (
        "Task billing_portal.run_scheduled_job failed (job=render_invoice_pdfs, "
        f"organisation_id={org.pk}, invoice_id={invoice.pk}): RuntimeError: renderer crashed"
    )


def test_an_invoice_the_pdf_job_cannot_render_is_logged_and_the_others_go_on(
    org, log_lines, monkeypatch
):
    broken = issued_invoice(organisation=org, number="INV-2026-000001")
    fine = issued_invoice(organisation=org, number="INV-2026-000002")
    real = billing_documents.invoice_document_original

    def render(*, invoice, now):
        if invoice.pk == broken.pk:
            raise RuntimeError("renderer crashed")
        return real(invoice=invoice, now=now)

    monkeypatch.setattr("billing.documents.invoice_document_original", render)
    result = run_scheduled_job.apply(args=["render_invoice_pdfs"], throw=False)

    assert result.successful()
    assert result.result == "1 PDF(s) rendered"
    assert fine.documents.filter(kind="original").exists()
    assert not broken.documents.exists()
    [line] = [line for line in log_lines() if line["level"] == "ERROR"]
    assert line["message"] == "Could not render the PDF of invoice INV-2026-000001"
    assert (line["organisation_id"], line["invoice_id"]) == (org.pk, broken.pk)
    assert line["exc_info"].endswith("RuntimeError: renderer crashed")


def test_a_failed_email_task_logs_the_emails_organisation(org, log_lines, monkeypatch):
    from accounts.tasks import deliver_email

    email = email_queue(
        to="a@acme.test", subject="Hi", body_text="Hi", template="t", organisation=org
    )

    def deliver(*, email_id, now):
        raise ConnectionResetError("SMTP went away")

    monkeypatch.setattr("accounts.tasks.email_deliver", deliver)
    assert deliver_email.apply(args=[email.pk], throw=False).failed()

    [line] = failure_lines(log_lines())
    assert line["organisation_id"] == org.pk
    assert "invoice_id" not in line
    assert line["task_args"] == repr(((email.pk,), {}))


def test_a_task_that_succeeds_logs_no_failure(org, log_lines):
    assert render_invoice_documents.apply(args=[[]], throw=False).get() == 0
    assert failure_lines(log_lines()) == []
