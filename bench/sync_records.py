"""Sync Info records as the integration runtime sends them to POST /api/v1/sync-info, for the
benches that ingest (bench/ingest.py, bench/load.py and its locustfile)."""

import random
from datetime import datetime, timedelta

MESSAGES = ["Customer not found in the target application.", "Timed out (30 s).", "HTTP 502"]
FAILED_SHARE = 0.03


def sync_records(
    rng: random.Random,
    flow_ids: list[str],
    *,
    count: int,
    now: datetime,
    span_seconds: float,
) -> list[dict]:
    """`count` records of flows among `flow_ids` (public ids), synced within the `span_seconds`
    before `now`, about 3% failed with a message."""
    records = []
    for _ in range(count):
        failed = rng.random() < FAILED_SHARE
        records.append(
            {
                "flow_id": rng.choice(flow_ids),
                "record_key": f"SO-{rng.randint(10_000, 99_999)}",
                "status": "failed" if failed else "success",
                "direction": rng.choice(("inbound", "outbound")),
                "synced_at": (now - timedelta(seconds=rng.uniform(0, span_seconds))).isoformat(),
                "message": rng.choice(MESSAGES) if failed else "",
            }
        )
    return records
