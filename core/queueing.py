"""Queueing background work from a request, without letting a broken broker hold the page.

Everything queued from a web request (an email, PDFs, an approved deletion) is also picked up
by a scheduled job, so a task that cannot be queued is late, never lost. When Redis is down
or hung, each `.delay()` waits for the broker's timeouts; after one failure this process
stops trying for BROKER_RETRY_AFTER_SECONDS, so a page that queues three emails waits once.
"""

import logging
import time

from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

BROKER_RETRY_AFTER_SECONDS = 10.0

# What an unreachable or hung broker raises from .delay() (kombu wraps redis-py's errors).
BROKER_ERRORS = (OperationalError, OSError)

_broker_failed_at: float | None = None


def _monotonic() -> float:
    return time.monotonic()


def enqueue(task, *args, catch_up: str) -> bool:
    """Queue `task(*args)`; False (and a warning naming `catch_up`) when the broker fails.

    `catch_up` says which scheduled job does the work instead, for the log line.
    """
    global _broker_failed_at
    if _broker_failed_at is not None:
        if _monotonic() - _broker_failed_at < BROKER_RETRY_AFTER_SECONDS:
            logger.warning("Broker down: %s%r not queued; %s will do it", task.name, args, catch_up)
            return False
        _broker_failed_at = None
    try:
        task.delay(*args)
    except Exception as error:  # noqa: BLE001 - whatever went wrong, the scheduled job catches up
        if isinstance(error, BROKER_ERRORS):
            _broker_failed_at = _monotonic()
        logger.warning(
            "Could not queue %s%r; %s will do it", task.name, args, catch_up, exc_info=True
        )
        return False
    return True


def broker_failure_forget() -> None:
    """Try the broker again at the next call (tests; a process that knows it is back)."""
    global _broker_failed_at
    _broker_failed_at = None
