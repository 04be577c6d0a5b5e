"""One registry of scheduled jobs, run by Celery beat and by `manage.py tick` alike.

Each app declares its jobs in a `jobs.py` module:

    @scheduled_job(name="expire_invitations", schedule=crontab(minute="*/5"))
    def expire_invitations(*, now):
        return f"{invitation_expire_due(now=now)} expired"

A job takes the instant it runs for (`now`), calls services, and returns a short summary.
Jobs must be safe to run twice or concurrently: they claim due rows and record what they did.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery.schedules import crontab
from django.utils.module_loading import autodiscover_modules

JobFunc = Callable[..., str | None]


@dataclass(frozen=True)
class Job:
    name: str
    func: JobFunc
    schedule: crontab | timedelta
    # Jobs run by `tick` in this order (lower first), then by name: e.g. renewals before dunning.
    order: int = 100


_registry: dict[str, Job] = {}
_discovered = False


def scheduled_job(*, name: str, schedule: crontab | timedelta, order: int = 100):
    def register(func: JobFunc) -> JobFunc:
        existing = _registry.get(name)
        if existing is not None and existing.func is not func:
            raise ValueError(f"Two scheduled jobs are named {name!r}.")
        _registry[name] = Job(name=name, func=func, schedule=schedule, order=order)
        return func

    return register


def _discover() -> None:
    global _discovered
    if not _discovered:
        autodiscover_modules("jobs")
        _discovered = True


def all_jobs() -> list[Job]:
    _discover()
    return sorted(_registry.values(), key=lambda job: (job.order, job.name))


def get_job(name: str) -> Job:
    _discover()
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(job.name for job in all_jobs())
        raise KeyError(f"No scheduled job named {name!r}. Known jobs: {known}.") from None


def run_job(name: str, *, now: datetime) -> str | None:
    if now.tzinfo is None:
        raise ValueError("Scheduled jobs need an aware datetime for `now`.")
    return get_job(name).func(now=now)
