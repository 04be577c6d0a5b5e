"""Backups (README "Backups"): what the README says to run, run for real.

The test database gets committed data (an organisation, its Admin, a subscription, an issued
invoice with its PDF, a Sync Info row in a partition); `pg_dump -Fc` dumps it, `pg_restore`
loads it into a fresh database, `manage.py migrate --check` finds nothing to apply, and a
gunicorn started on the restored database serves it: the Admin signs in, sees the invoice in
Invoice History and downloads the very same PDF bytes; /healthz is ok. The restored database is
dropped at the end.
"""

import http.cookiejar
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from billing.documents import invoice_document_original
from billing.models import Invoice
from subscriptions.models import Plan
from tests.accounts.factories import PASSWORD
from tests.billing.factories import issued_invoice
from tests.subscriptions.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db(transaction=True)

SYNC_ROW_KEY = "backup-restore-test"
SYNC_ROW_QUERY = (
    "SELECT tableoid::regclass, organisation_id FROM usage_syncinfo "  # noqa: S608
    f"WHERE record_key = '{SYNC_ROW_KEY}'"
)


def pg_tool(name: str) -> str:
    """The PostgreSQL client `name`: from $PG_BIN (scripts/env.sh, sourced by `make test`),
    else from PATH."""
    pg_bin = os.environ.get("PG_BIN")
    if pg_bin and Path(pg_bin, name).is_file():
        return str(Path(pg_bin, name))
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run through `make test` or `source scripts/env.sh` first")
    return found


def pg(name: str, *args: str) -> str:
    database = connection.settings_dict
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    if database["PASSWORD"]:
        env["PGPASSWORD"] = database["PASSWORD"]
    target = ["-h", database["HOST"] or "127.0.0.1", "-p", database["PORT"] or "5432"]
    result = subprocess.run(
        [pg_tool(name), *target, "-U", database["USER"], *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{name} {' '.join(args)}: {result.stderr}"
    return result.stdout


def database_url(name: str) -> str:
    database = connection.settings_dict
    password = f":{urllib.parse.quote(database['PASSWORD'])}" if database["PASSWORD"] else ""
    return (
        f"postgres://{urllib.parse.quote(database['USER'])}{password}@"
        f"{database['HOST'] or '127.0.0.1'}:{database['PORT'] or '5432'}/{name}"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def portal_env(restored: str) -> dict:
    """The portal's environment, pointed at the restored database. Test settings, because the
    users' passwords were hashed with the tests' fast hasher."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(
        DJANGO_SETTINGS_MODULE="billing_portal.test_settings",
        DATABASE_URL=database_url(restored),
        PYTHONUNBUFFERED="1",
    )
    return env


class Browser:
    """Just enough of a browser: cookies, redirects followed, the CSRF token of the last form."""

    def __init__(self, base: str):
        self.base = base
        self.url = ""  # where the last request ended, after redirects
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def get(self, path: str) -> tuple[int, bytes]:
        return self._open(urllib.request.Request(self.base + path))  # noqa: S310 (http://127.0.0.1)

    def post(self, path: str, data: dict) -> tuple[int, bytes]:
        body = urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(  # noqa: S310 (http://127.0.0.1)
            self.base + path, data=body, method="POST"
        )
        return self._open(request)

    def _open(self, request) -> tuple[int, bytes]:
        try:
            with self.opener.open(request, timeout=20) as response:
                self.url = response.url
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            self.url = error.url
            return error.code, error.read()


def wait_until_serving(browser: Browser, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"gunicorn exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            browser.get("/healthz")
        except OSError:
            time.sleep(0.2)
        else:
            return
    pytest.fail(f"gunicorn did not answer within 30 s:\n{log.read_text()[-3000:]}")


def insert_sync_row(organisation_id: int) -> None:
    # Retention 1 day is no plan's tier, so the row lands in the default partition; a tier
    # partition created here would outlive the test (they are made by DDL, not flushed).
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at, retention_days) "
            "VALUES (%s, 1, 1, 1, %s, 'success', 'outbound', %s, 1)",
            [organisation_id, SYNC_ROW_KEY, timezone.now()],
        )


def test_a_dump_restores_into_a_fresh_database_and_the_portal_serves_it(org, admin, tmp_path):
    subscription = SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="professional"))
    invoice = issued_invoice(
        organisation=org, subscription=subscription, status=Invoice.Status.PAID
    )
    pdf = bytes(invoice_document_original(invoice=invoice, now=timezone.now()).pdf)
    assert pdf.startswith(b"%PDF")

    source = connection.settings_dict["NAME"]
    restored = f"{source}_restored"
    dump = tmp_path / "portal.dump"
    log = tmp_path / "gunicorn.log"
    server = None
    pg("dropdb", "--if-exists", "--force", restored)  # left over by an interrupted run
    try:
        insert_sync_row(org.pk)
        # README "Backups": dump, fresh database, restore, migrations check, start.
        pg("pg_dump", "-Fc", "-f", str(dump), "-d", source)
        pg("createdb", restored)
        pg("pg_restore", "--no-owner", "-j", "2", "-d", restored, str(dump))

        rows = pg("psql", "-X", "-tA", "-d", restored, "-c", SYNC_ROW_QUERY)
        assert rows.strip() == f"usage_syncinfo_default|{org.pk}"

        check = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--check"],
            cwd=settings.BASE_DIR,
            env=portal_env(restored),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr

        port = free_port()
        with log.open("w") as output:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "billing_portal.wsgi:application",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "1",
                ],
                cwd=settings.BASE_DIR,
                env=portal_env(restored),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        browser = Browser(f"http://127.0.0.1:{port}")
        wait_until_serving(browser, server, log)

        status, body = browser.get("/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"

        status, page = browser.get("/accounts/login/")
        assert status == 200
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        status, _ = browser.post(
            "/accounts/login/",
            {"csrfmiddlewaretoken": token.decode(), "login": admin.email, "password": PASSWORD},
        )
        assert status == 200
        assert not browser.url.endswith("/accounts/login/")  # signed in and sent on

        status, page = browser.get(f"/o/{org.slug}/settings/billing/invoices/")
        assert status == 200, page[:500]
        assert invoice.number.encode() in page

        status, downloaded = browser.get(
            f"/o/{org.slug}/settings/billing/invoices/{invoice.number}/pdf/"
        )
        assert status == 200
        assert downloaded == pdf
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        pg("dropdb", "--if-exists", "--force", restored)
