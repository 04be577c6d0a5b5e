"""Structured logs: a request id on every line, JSON lines in production, task failures with ids.

A web request gets its id from the proxy's X-Request-ID header when that looks sane, otherwise a
new one; the response carries it back in X-Request-ID. In a Celery worker the task id plays that
role. `LogContextFilter`, on the console handler (settings.LOGGING), copies the current id and any
`log_context(...)` ids onto every record, so a line logged deep inside a service still says which
request, organisation and invoice it belongs to. README "Logs and health" describes the fields.
"""

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from django.core.signals import request_finished
from django.dispatch import receiver

request_logger = logging.getLogger("billing_portal.request")
task_logger = logging.getLogger("billing_portal.tasks")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_context: ContextVar[dict] = ContextVar("log_context", default={})  # noqa: B039 - never mutated

# What a proxy may hand us as a request id: UUIDs, hex, the usual trace ids. Anything else (too
# long, spaces, quotes, newlines that could forge log lines) is replaced by an id of our own.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{8,128}")
# Probes hit these every few seconds; their access line is logged only when they fail.
QUIET_PATHS = frozenset({"/healthz"})
# URL arguments that are secrets (invitation tokens, allauth confirmation and reset keys): never
# written to the logs, which are read by more people than the links were sent to.
SECRET_URL_KWARGS = frozenset({"token", "key"})

# The fields a JSON line may carry besides timestamp, level, logger and message, in this order.
# Anything else passed as `extra` stays out of the JSON (e.g. Django's `request` object).
FIELDS = (
    "request_id",
    "organisation_id",
    "user_id",
    "invoice_id",
    "invoice_ids",
    "method",
    "path",
    "status",
    "duration_ms",
    "job",
    "task_name",
    "task_id",
    "task_args",
)


@contextmanager
def log_context(**ids) -> Iterator[None]:
    """Add ids (e.g. organisation_id=, invoice_id=) to every log record inside the block.

    An exception escaping the block keeps the innermost ids as `exception.log_context`, so the
    Celery failure handler can say which row a scheduled job failed on.
    """
    token = _context.set({**_context.get(), **ids})
    try:
        yield
    except Exception as error:
        if not hasattr(error, "log_context"):
            error.log_context = dict(_context.get())
        raise
    finally:
        _context.reset(token)


class LogContextFilter(logging.Filter):
    """Copies the request (or task) id and the `log_context` ids onto each record.

    `extra` given at the call wins over the context. Always lets the record through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    instant = datetime.fromtimestamp(record.created, UTC)
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC), level, logger, message, request_id, then
    whichever of FIELDS the record has, then exc_info (the formatted traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for field in FIELDS[1:]:  # request_id is always there, null outside requests and tasks
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """Readable development lines: `time LEVEL logger [request id] message`, traceback below."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_label)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.request_label = getattr(record, "request_id", None) or "-"
        return super().format(record)


def _inbound_request_id(request) -> str:
    candidate = request.headers.get("X-Request-ID", "")
    if REQUEST_ID_PATTERN.fullmatch(candidate):
        return candidate
    return uuid.uuid4().hex


def _logged_path(request) -> str:
    match = getattr(request, "resolver_match", None)
    path = request.path
    if match is not None:
        for name, value in match.kwargs.items():
            if name in SECRET_URL_KWARGS and value:
                path = path.replace(str(value), "[redacted]")
    return path


class RequestIdMiddleware:
    """First in MIDDLEWARE: sets the request id for the whole request, returns it in the
    X-Request-ID header and writes one access line per request (logger billing_portal.request).

    The user id is logged only when something already loaded the user, so this middleware never
    adds a query; the organisation id is the one @tenant_view resolved.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = _inbound_request_id(request)
        request.request_id = request_id
        # Kept until the response is closed (_forget_request_id), so Django's own line about an
        # error response, logged after the middleware returns, and a streamed body's lines
        # carry it too.
        _request_id.set(request_id)
        started = time.monotonic()
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        self._log(request, response, duration_ms=(time.monotonic() - started) * 1000)
        return response

    def _log(self, request, response, *, duration_ms: float) -> None:
        if request.path in QUIET_PATHS and response.status_code < 400:
            return
        user = getattr(request, "_cached_user", None)
        organisation = getattr(request, "organisation", None)
        path = _logged_path(request)
        request_logger.info(
            "%s %s %s %.0fms",
            request.method,
            path,
            response.status_code,
            duration_ms,
            extra={
                "method": request.method,
                "path": path,
                "status": response.status_code,
                "duration_ms": round(duration_ms, 1),
                "user_id": user.pk if user is not None and user.is_authenticated else None,
                "organisation_id": organisation.pk if organisation is not None else None,
            },
        )


@receiver(request_finished)
def _forget_request_id(**kwargs) -> None:
    _request_id.set(None)


# Celery --------------------------------------------------------------------------------------
# Connected in billing_portal/celery.py, so they run in workers and for eager tasks alike.

_task_tokens: dict[str, object] = {}


def task_prerun(*, task_id: str, **kwargs) -> None:
    """In a worker the task id is the request id of every line the task logs."""
    _task_tokens[task_id] = _request_id.set(task_id)


def task_postrun(*, task_id: str, **kwargs) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        _request_id.reset(token)


# Task name -> how its first argument leads to the organisation (and invoice) it worked for.
# Each app registers its own tasks' lookups (register_task_ids in its tasks.py), so the kernel
# needs no app. Scheduled jobs (billing_portal.run_scheduled_job) take only a job name: the row a
# job failed on comes from the exception's `log_context` instead (see log_context above).
TASK_IDS: dict[str, Callable[[Any], dict]] = {}


def register_task_ids(task_name: str, lookup: Callable[[Any], dict]) -> None:
    """Say how a task's first argument names the organisation (and invoice) it works for."""
    TASK_IDS[task_name] = lookup


def _ids_from_arguments(task_name: str, args, kwargs) -> dict:
    lookup = TASK_IDS.get(task_name)
    arguments = [*(args or ()), *(kwargs or {}).values()]
    if lookup is None or not arguments:
        return {}
    try:
        return lookup(arguments[0])
    except Exception:  # noqa: BLE001 - the database may be what failed; log the failure anyway
        return {}


def task_failure(*, sender, task_id: str, exception, args, kwargs, traceback=None, **extra):
    """Log a failed task at ERROR with its name, id, arguments and the organisation and invoice
    it was working on, from the exception's `log_context` or else from its arguments."""
    name = sender.name
    ids = {"job": args[0]} if name == "billing_portal.run_scheduled_job" and args else {}
    # The row the exception escaped from is more precise than what the arguments say.
    ids.update(getattr(exception, "log_context", None) or _ids_from_arguments(name, args, kwargs))
    ids = {key: value for key, value in ids.items() if key in FIELDS and value is not None}
    labels = ", ".join(f"{key}={value}" for key, value in ids.items())
    task_logger.error(
        "Task %s failed%s: %s: %s",
        name,
        f" ({labels})" if labels else "",
        type(exception).__name__,
        exception,
        exc_info=(type(exception), exception, traceback),
        extra={
            "task_name": name,
            "task_id": task_id,
            "task_args": repr((tuple(args or ()), dict(kwargs or {})))[:500],
            **ids,
        },
    )
