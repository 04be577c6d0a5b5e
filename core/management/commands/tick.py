"""Run every scheduled job as of one instant, exactly as Celery beat does (DESIGN.md 3)."""

from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from core.jobs import all_jobs, get_job, run_job


def parse_instant(value: str) -> datetime:
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"--now {value!r} is not an ISO-8601 date-time (e.g. 2026-11-27T09:00:00Z)."
        ) from None
    if instant.tzinfo is None:
        raise CommandError(f"--now {value!r} needs a UTC offset or Z (e.g. 2026-11-27T09:00:00Z).")
    return instant


class Command(BaseCommand):
    help = "Run the scheduled jobs as of --now (default: the current time). Safe to run twice."

    def add_arguments(self, parser):
        parser.add_argument("--now", help="ISO-8601 date-time with offset, e.g. 2026-11-27T09:00Z")
        parser.add_argument("--job", action="append", help="Run only this job (repeatable).")
        parser.add_argument("--list", action="store_true", help="List the jobs and exit.")

    def handle(self, *args, **options):
        if options["list"]:
            for job in all_jobs():
                self.stdout.write(f"{job.name}\t{job.schedule}")
            return
        now = parse_instant(options["now"]) if options["now"] else timezone.now()
        try:
            jobs = [get_job(name) for name in options["job"]] if options["job"] else all_jobs()
        except KeyError as error:
            raise CommandError(error.args[0]) from None

        failed = []
        for job in jobs:
            try:
                summary = run_job(job.name, now=now)
            except Exception as error:  # noqa: BLE001 - one failing job must not stop the others
                failed.append(job.name)
                self.stderr.write(f"{job.name}: FAILED: {type(error).__name__}: {error}")
                continue
            self.stdout.write(f"{job.name}: {summary or 'done'}")
        if failed:
            raise CommandError(f"{len(failed)} job(s) failed: {', '.join(failed)}.")
