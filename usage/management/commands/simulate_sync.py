"""Simulate an integration runtime: post realistic Sync Info batches through the machine API.

    python manage.py simulate_sync --org acme-trading --records 100000 [--batch 1000]
        [--url http://127.0.0.1:8000] [--days 7]

Uses (or creates) an environment of the organisation and a couple of ProcessFlows in it, within
the plan's limits, and a fresh API key named "simulate_sync" (keys are stored hashed, so an
earlier one cannot be read back; the previous simulate_sync keys of the environment are
revoked). Each batch carries its own Idempotency-Key and is resent with the same key after a
network error or a 5xx, so it is never counted twice.
"""

import argparse
import http.client
import json
import random
import time
import uuid
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.audit import SYSTEM
from accounts.models import Organisation
from core.errors import ServiceError
from subscriptions.models import Environment, ProcessFlow
from subscriptions.services import environment_create, process_flow_create
from usage.models import ApiKey
from usage.services import MAX_RECORDS, api_key_create, api_key_revoke

KEY_NAME = "simulate_sync"
FLOWS = [
    ("Sales orders: Shopify to SAP Business One", "SO"),
    ("Customers: Salesforce to SAP Business One", "CUST"),
]
FAILURES = [
    "Customer not found in the target application.",
    "Item code does not exist in SAP Business One.",
    "Timed out waiting for the target application (30 s).",
    "Validation failed: the tax code is missing.",
    "Duplicate document number in the target application.",
]
FAILURE_RATE = 0.03
SNAPSHOT_RATE = 0.05
RETRIES = 3


class Command(BaseCommand):
    help = "Post simulated Sync Info batches for an organisation through the machine API."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="The organisation's slug.")
        parser.add_argument("--records", required=True, type=int, help="How many records.")
        parser.add_argument("--batch", type=int, default=1000, help="Records per batch.")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="The portal.")
        parser.add_argument("--days", type=int, default=7, help="Spread synced_at over days.")
        parser.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)

    def handle(self, *args, **options):
        records, size, days = options["records"], options["batch"], options["days"]
        if records <= 0:
            raise CommandError("--records must be a positive number of records.")
        if not 1 <= size <= MAX_RECORDS:
            raise CommandError(f"--batch must be between 1 and {MAX_RECORDS:,} records.")
        if not 1 <= days <= 365:
            raise CommandError("--days must be between 1 and 365.")
        url = urlsplit(options["url"])
        if url.scheme not in ("http", "https") or not url.hostname:
            raise CommandError(f"--url must be an http(s) URL, not {options['url']!r}.")
        organisation = Organisation.objects.filter(slug=options["org"]).first()
        if organisation is None:
            raise CommandError(f"There is no organisation with the slug {options['org']!r}.")
        now = timezone.now()
        try:
            environment, flows = _environment_and_flows(organisation, now=now)
        except ServiceError as error:
            raise CommandError(f"{organisation.name}: {error.message}") from None
        plain = _fresh_key(environment, now=now)
        rng = random.Random(options["seed"])  # noqa: S311 - made-up records, not secrets
        self.stdout.write(
            f"Posting {records:,} records to {options['url']} for {organisation.name} "
            f"({environment.name}: {', '.join(flow.name for flow in flows)}), "
            f"batches of {size:,}"
        )
        poster = _Poster(url, plain)
        run = uuid.uuid4().hex[:12]
        sent, started, last_report = 0, time.perf_counter(), 0.0
        try:
            for index in range(-(-records // size)):
                count = min(size, records - sent)
                batch = _batch(rng, flows, count=count, days=days, now=timezone.now())
                body = json.dumps({"records": batch}).encode()
                poster.post(body, idempotency_key=f"simulate-{run}-{index}")
                sent += count
                elapsed = time.perf_counter() - started
                if elapsed - last_report >= 2 or sent == records:
                    last_report = elapsed
                    self.stdout.write(
                        f"  {sent:>12,} / {records:,} records ({100 * sent // records}%), "
                        f"{sent / elapsed:,.0f} records/s"
                    )
        finally:
            poster.close()
        elapsed = time.perf_counter() - started
        self.stdout.write(
            f"Posted {sent:,} records in {elapsed:.1f} s: {sent / elapsed:,.0f} records/s"
        )


def _environment_and_flows(
    organisation: Organisation, *, now: datetime
) -> tuple[Environment, list[ProcessFlow]]:
    """The organisation's first environment and its active flows, creating what is missing."""
    environment = organisation.environments.order_by("created_at", "pk").first()
    if environment is None:
        environment = environment_create(
            organisation=organisation, actor=SYSTEM, now=now, name="Production"
        )
    flows = list(
        ProcessFlow.objects.filter(
            environment=environment, status=ProcessFlow.Status.ACTIVE
        ).order_by("created_at", "pk")[: len(FLOWS)]
    )
    names = {flow.name for flow in flows}
    for name, _ in FLOWS:
        if len(flows) >= len(FLOWS):
            break
        if name in names:
            continue
        try:
            flows.append(
                process_flow_create(
                    organisation=organisation,
                    actor=SYSTEM,
                    now=now,
                    name=name,
                    environment=environment,
                )
            )
        except ServiceError:
            if not flows:
                raise
            break  # the plan allows no more: one flow will do
    return environment, flows


def _fresh_key(environment: Environment, *, now: datetime) -> str:
    for old in ApiKey.objects.filter(
        environment=environment, name=KEY_NAME, revoked_at__isnull=True
    ):
        api_key_revoke(key=old, actor=SYSTEM, now=now)
    _, plain = api_key_create(environment=environment, actor=SYSTEM, name=KEY_NAME, now=now)
    return plain


def _batch(rng: random.Random, flows: list[ProcessFlow], *, count: int, days: int, now) -> list:
    span = days * 86_400
    records = []
    for _ in range(count):
        flow_index = rng.randrange(len(flows))
        prefix = FLOWS[flow_index % len(FLOWS)][1]
        failed = rng.random() < FAILURE_RATE
        record_key = f"{prefix}-{rng.randint(10_000, 99_999)}"
        record = {
            "flow_id": str(flows[flow_index].public_id),
            "record_key": record_key,
            "status": "failed" if failed else "success",
            "direction": "outbound" if rng.random() < 0.7 else "inbound",
            "synced_at": (now - timedelta(seconds=rng.uniform(0, span))).isoformat(),
            "message": rng.choice(FAILURES) if failed else "",
        }
        if rng.random() < SNAPSHOT_RATE:
            record["snapshot"] = {
                "document": record_key,
                "lines": [
                    {"item": f"ITEM-{rng.randint(100, 999)}", "quantity": rng.randint(1, 20)}
                    for _ in range(rng.randint(1, 4))
                ],
                "total": f"{rng.uniform(10, 5000):.2f}",
            }
        records.append(record)
    return records


class _Poster:
    """POSTs batches over one keep-alive connection, resending (same key) after failures."""

    def __init__(self, url, plain: str):
        self.url = url
        self.path = (url.path.rstrip("/") or "") + "/api/v1/sync-info"
        self.headers = {
            "Authorization": f"Bearer {plain}",
            "Content-Type": "application/json",
        }
        self.connection = None

    def _connect(self):
        cls = (
            http.client.HTTPSConnection
            if self.url.scheme == "https"
            else http.client.HTTPConnection
        )
        return cls(self.url.hostname, self.url.port, timeout=60)

    def post(self, body: bytes, *, idempotency_key: str) -> dict:
        headers = {**self.headers, "Idempotency-Key": idempotency_key}
        for attempt in range(1, RETRIES + 1):
            try:
                if self.connection is None:
                    self.connection = self._connect()
                self.connection.request("POST", self.path, body=body, headers=headers)
                response = self.connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as error:
                self.close()
                if attempt == RETRIES:
                    raise CommandError(f"Could not reach {self.url.geturl()}: {error}") from None
                time.sleep(attempt)
                continue
            if response.status >= 500 and attempt < RETRIES:
                time.sleep(attempt)
                continue
            try:
                answer = json.loads(payload)
            except ValueError:
                answer = {"error": payload[:200].decode(errors="replace")}
            if response.status != 201:
                raise CommandError(
                    f"The API answered {response.status}: {answer.get('error', answer)}"
                )
            return answer
        raise AssertionError("unreachable")

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None
