"""The users of bench/load.py, for locust (run by bench/load.py; see its docstring).

Reads the plan bench/load.py writes (LOAD_PLAN: the server, the accounts, the API keys, the
counts and times) and writes every request's outcome to the plan's `samples` file when the
measurement ends. Three kinds of users, each waiting `think` seconds (uniform) between steps:

- Browser (`users` of them): signs in once through the real allauth form (GET for the CSRF
  token, POST), then loops over Settings > Subscription, Invoice History, an invoice PDF from
  that list, Sync Info's first page, and Sync Info with a filter or an older page, starting the
  loop at a random step so the users do not march in step.
- Runtime (`api_users`): POSTs a batch of `batch` fresh records to /api/v1/sync-info with its
  environment's key and a new Idempotency-Key each time.
- Floor (`floor_users`): GETs the anonymous trivial view of bench/load_urls.py, at about the
  rate each page gets (one Floor user per step of the Browser loop's `users`).
- SignedInFloor (`signed_floor_users`): signs in as a Browser does, then GETs the signed-in
  floor of bench/load_urls.py (middleware, session, user, tenant_view's membership lookup and
  gates, nothing else) at the same rate as Floor.

Every request goes out as the TLS proxy would forward it (X-Forwarded-Proto: https, and an
X-Forwarded-For per browser). A request counts as an error when its status is not the expected
one or its body is not the expected page (a sign-in page or another organisation's data
instead of the page, a non-PDF, a batch not fully accepted); redirects are never followed.

The measurement starts `warmup` seconds after the last browser has signed in (the sign-ins hash
passwords, the first requests of each worker load templates) and lasts `duration` seconds; then
this process stops. Response times are locust's, in milliseconds, kept raw (not bucketed).

Capacity (`mode` "capacity", think time 0, one user class named on locust's command line): the
users are raised to each count of `steps` in turn; each step is measured for `step_seconds`,
`step_warmup` seconds after its users have all signed in, with the phase "step:<users>". At the
start of each measured step the count is written to `marker` (bench/load.py starts the
profiler on it). `only` restricts the Browser loop to those steps (the profile of one page).
"""

import html
import itertools
import json
import os
import random
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from urllib.parse import urlencode

import gevent
from locust import FastHttpUser, between, events, task
from sync_records import sync_records  # bench/, on sys.path as the locustfile's folder

PLAN = json.loads(Path(os.environ["LOAD_PLAN"]).read_text())
THINK = between(*PLAN["think"])
HTTPS = PLAN["host"].replace("http://", "https://", 1)
RNG = random.Random()

_accounts = itertools.cycle(PLAN["accounts"])
_api_keys = itertools.cycle(PLAN["api"])
_client_ips = (f"10.{n // 250}.{n % 250}.{1 + n % 7}" for n in itertools.count(1))
STATE = {"phase": "warmup", "signed_in": 0, "sign_in_failed": 0, "started": None, "ended": None}
SAMPLES: list[tuple[str, float, bool, str]] = []  # name, ms, ok, phase
ERRORS: list[tuple[str, str, str]] = []  # name, phase, message (first few per name)


@events.request.add_listener
def _record(name, response_time, exception, **_kwargs):
    SAMPLES.append((name, response_time, exception is None, STATE["phase"]))
    if exception is not None and sum(1 for error in ERRORS if error[0] == name) < 5:
        ERRORS.append((name, STATE["phase"], str(exception)[:300]))


@events.test_start.add_listener
def _start(environment, **_kwargs):
    gevent.spawn(_control, environment)


def _wait_signed_in(count: int):
    deadline = time.monotonic() + PLAN["sign_in_timeout"]
    while STATE["signed_in"] + STATE["sign_in_failed"] < count and time.monotonic() < deadline:
        gevent.sleep(0.1)


def _control(environment):
    if PLAN.get("mode") == "capacity":
        _control_capacity(environment)
        return
    _control_think(environment)


def _control_capacity(environment):
    """Raise the users step by step; measure each step once its users have signed in."""
    windows = []
    for users in PLAN["steps"]:
        environment.runner.start(users, spawn_rate=max(users, 1))
        _wait_signed_in(users)
        STATE["phase"] = "between"
        gevent.sleep(PLAN["step_warmup"])
        started = time.time()
        STATE["phase"] = f"step:{users}"
        if PLAN.get("marker"):
            Path(PLAN["marker"]).write_text(str(users))
        gevent.sleep(PLAN["step_seconds"])
        STATE["phase"] = "between"
        windows.append((users, started, time.time()))
    Path(PLAN["samples"]).write_text(
        json.dumps(
            {
                "windows": windows,
                "signed_in": STATE["signed_in"],
                "sign_in_failed": STATE["sign_in_failed"],
                "samples": SAMPLES,
                "errors": ERRORS,
            }
        )
    )
    environment.runner.quit()


def _control_think(environment):
    """Wait for every browser to sign in, warm up, measure, write the samples, stop."""
    _wait_signed_in(PLAN["users"] + PLAN.get("signed_floor_users", 0))
    signed_in_at = time.time()
    gevent.sleep(PLAN["warmup"])
    STATE["phase"], STATE["started"] = "measure", time.time()
    gevent.sleep(PLAN["duration"])
    STATE["phase"], STATE["ended"] = "done", time.time()
    Path(PLAN["samples"]).write_text(
        json.dumps(
            {
                "started": STATE["started"],
                "ended": STATE["ended"],
                "signed_in_at": signed_in_at,
                "signed_in": STATE["signed_in"],
                "sign_in_failed": STATE["sign_in_failed"],
                "samples": SAMPLES,
                "errors": ERRORS,
            }
        )
    )
    environment.runner.quit()


class ThroughTheProxy(DefaultCookiePolicy):
    """Send the Secure cookies (session, CSRF) on the plain-http leg to gunicorn: the client
    stands for the browser and its TLS proxy together. (Locust's own workaround for this stopped
    working when geventhttpclient began setting each request's scheme itself.)"""

    def return_ok_secure(self, cookie, request):
        return True


def _check(response, *, status: int, marker: str | bytes | None = None, why: str = ""):
    if response.status_code != status:
        where = response.headers.get("Location") or ""
        response.failure(f"HTTP {response.status_code} {where}".strip())
    elif marker is not None:
        body = response.content if isinstance(marker, bytes) else response.text
        if marker not in body:
            response.failure(why or f"{marker!r} not in the response")
        else:
            response.success()
    else:
        response.success()


class SignedIn(FastHttpUser):
    """An Admin of one organisation, signed in through the allauth form (no task of its own)."""

    abstract = True
    wait_time = THINK
    STEPS = PLAN.get("only") or (
        "subscription",
        "invoice_history",
        "invoice_pdf",
        "sync_info",
        "sync_info_filtered",
    )

    def on_start(self):
        self.account = next(_accounts)
        self.base = f"/o/{self.account['org']}"
        self.headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": next(_client_ips)}
        self.steps = itertools.islice(
            itertools.cycle(self.STEPS), random.randrange(len(self.STEPS)), None
        )
        self.older = None  # the "Older →" link of the last Sync Info page
        self.client.cookiejar.set_policy(ThroughTheProxy())
        self.signed_in = self._sign_in()
        STATE["signed_in" if self.signed_in else "sign_in_failed"] += 1

    def _sign_in(self) -> bool:
        with self.client.get(
            "/accounts/login/",
            name="sign_in_form",
            headers=self.headers,
            allow_redirects=False,
            catch_response=True,
        ) as form:
            _check(form, status=200, marker='name="csrfmiddlewaretoken"')
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text or "")
        if not found:
            return False
        with self.client.post(
            "/accounts/login/",
            data={
                "login": self.account["email"],
                "password": self.account["password"],
                "csrfmiddlewaretoken": found.group(1),
            },
            name="sign_in",
            headers={
                **self.headers,
                "Origin": HTTPS,
                "Referer": f"{HTTPS}/accounts/login/",
            },
            allow_redirects=False,
            catch_response=True,
        ) as response:
            location = response.headers.get("Location") or ""
            if response.status_code != 302 or "/accounts/" in location:
                response.failure(f"sign-in refused: HTTP {response.status_code} {location}")
                return False
            response.success()
        return True

    def _get(self, name: str, path: str, **kwargs):
        return self.client.get(
            path,
            name=name,
            headers=self.headers,
            allow_redirects=False,
            catch_response=True,
            **kwargs,
        )


class Browser(SignedIn):
    """A signed-in Admin browsing the billing and usage pages of their organisation."""

    weight = 1

    @task
    def step(self):
        if self.signed_in:  # else the failed sign-in is counted; the user only waits
            getattr(self, next(self.steps))()

    def subscription(self):
        with self._get("subscription", f"{self.base}/settings/subscription/") as response:
            _check(response, status=200, marker="<h2>Current plan</h2>", why="not Subscription")

    def invoice_history(self):
        with self._get("invoice_history", f"{self.base}/settings/billing/invoices/") as response:
            # The newest invoice of this organisation: the page, and this tenant's.
            _check(response, status=200, marker=f">{self.account['invoices'][0]}<")

    def invoice_pdf(self):
        number = random.choice(self.account["invoices"])
        path = f"{self.base}/settings/billing/invoices/{number}/pdf/"
        with self._get("invoice_pdf", path) as response:
            if response.headers.get("Content-Type") != "application/pdf":
                response.failure(f"HTTP {response.status_code}, not a PDF")
            else:
                _check(response, status=200, marker=b"%PDF-", why="not a PDF")

    def sync_info(self):
        with self._get("sync_info", f"{self.base}/sync-info/") as response:
            # Every seeded organisation has more than a page: the page has an older link.
            _check(response, status=200, marker='rel="next"', why="not a Sync Info page")
        self.older = self._older_link(response)

    def sync_info_filtered(self):
        """A filter (flow, status, range of days, or two of them), or the older page after the
        last one seen."""
        if self.older and random.random() < 0.5:
            path, self.older = self.older, None
        else:
            today = datetime.now(UTC).date()
            flow = random.choice(self.account["flows"])
            choices = [
                {"status": "failed"},
                {"flow": flow},
                {"date_from": str(today - timedelta(days=7)), "date_to": str(today)},
                {"flow": flow, "status": "success"},
                {"status": "success", "date_from": str(today - timedelta(days=2))},
            ]
            path = f"{self.base}/sync-info/?{urlencode(random.choice(choices))}"
        with self._get("sync_info_filtered", path) as response:
            _check(response, status=200, marker="<title>Sync Info ·", why="not Sync Info")
        self.older = self._older_link(response) or self.older

    def _older_link(self, response) -> str | None:
        found = re.search(r'<a href="(\?[^"]*)" rel="next">', response.text or "")
        return f"{self.base}/sync-info/{html.unescape(found.group(1))}" if found else None


class SignedInFloor(SignedIn):
    """The signed-in floor: an Admin signed in as a Browser is, asking for the view of
    bench/load_urls.py that stops after tenant_view."""

    # Alone in the capacity run (named on locust's command line); a fixed count beside the
    # browsers otherwise.
    if PLAN.get("mode") == "capacity":
        weight = 1
    else:
        weight = 0
        fixed_count = PLAN.get("signed_floor_users", 0)

    @task
    def floor(self):
        if self.signed_in:
            with self._get("signed_in_floor", f"{self.base}/bench/floor/") as response:
                _check(response, status=200, marker=b"ok\n")


class Runtime(FastHttpUser):
    """The integration runtime of one environment, sending Sync Info batches."""

    wait_time = THINK
    fixed_count = PLAN["api_users"]

    def on_start(self):
        self.key = next(_api_keys)

    @task
    def batch(self):
        records = sync_records(
            RNG, self.key["flows"], count=PLAN["batch"], now=datetime.now(UTC), span_seconds=3600
        )
        with self.client.post(
            "/api/v1/sync-info",
            data=json.dumps({"records": records}),
            name="api_batch",
            headers={
                "X-Forwarded-Proto": "https",
                "Authorization": f"Bearer {self.key['key']}",
                "Content-Type": "application/json",
                "Idempotency-Key": f"load-{uuid.uuid4().hex}",
            },
            allow_redirects=False,
            catch_response=True,
        ) as response:
            _check(response, status=201)
            if response.status_code == 201 and response.json().get("accepted") != PLAN["batch"]:
                response.failure(f"not all accepted: {response.text[:200]}")


class Floor(FastHttpUser):
    """The floor: the trivial view, anonymous, through the same middleware."""

    wait_time = THINK
    fixed_count = PLAN["floor_users"]

    @task
    def floor(self):
        with self.client.get(
            "/bench/floor/",
            name="floor",
            headers={"X-Forwarded-Proto": "https"},
            allow_redirects=False,
            catch_response=True,
        ) as response:
            _check(response, status=200, marker=b"ok\n")
