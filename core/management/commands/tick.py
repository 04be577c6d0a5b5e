"""Run every scheduled job as of one instant, exactly as Celery beat does.

`tick` and beat read the same registry (core/jobs.py), so a test or an operator moving the
clock with `--now` runs what production would run at that instant; every job is safe to run
twice (docs/architecture.md#decision-one-job-registry-run-by-beat-and-by-tick).
"""

import inspect
from datetime import datetime, timedelta

from celery.schedules import crontab
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from core.jobs import Job, all_jobs, get_job, run_job


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


def describe_schedule(schedule: crontab | timedelta) -> str:
    """A schedule as a person reads it ("every 15 minutes", "daily at 04:30"), else its crontab."""
    if isinstance(schedule, timedelta):
        return f"every {int(schedule.total_seconds())} s"
    minute, hour, day_of_month, month, day_of_week = (
        str(schedule._orig_minute),
        str(schedule._orig_hour),
        str(schedule._orig_day_of_month),
        str(schedule._orig_month_of_year),
        str(schedule._orig_day_of_week),
    )
    expression = f"{minute} {hour} {day_of_month} {month} {day_of_week}"
    if (day_of_month, month, day_of_week) != ("*", "*", "*"):
        return expression
    if hour == "*":
        if minute == "*":
            return "every minute"
        if minute.startswith("*/") and minute[2:].isdigit():
            return f"every {minute[2:]} minutes"
        if minute.isdigit():
            return f"hourly at :{int(minute):02d}"
    elif hour.isdigit() and minute.isdigit():
        return f"daily at {int(hour):02d}:{int(minute):02d}"
    return expression


def summary_of(job: Job) -> str:
    doc = inspect.getdoc(job.func)
    return doc.splitlines()[0] if doc else ""


class Command(BaseCommand):
    help = "Run the scheduled jobs as of --now (default: the current time). Safe to run twice."

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.error = lambda message: self.refuse_arguments(parser, message)
        return parser

    def refuse_arguments(self, parser, message: str):
        # Bad input gets one readable line and a non-zero exit, not argparse's usage block.
        if parser.called_from_command_line:
            parser.exit(1, f"CommandError: {message[:1].upper()}{message[1:]}.\n")
        raise CommandError(f"{message[:1].upper()}{message[1:]}.")

    def add_arguments(self, parser):
        parser.add_argument("--now", help="ISO-8601 date-time with offset, e.g. 2026-11-27T09:00Z")
        parser.add_argument("--job", action="append", help="Run only this job (repeatable).")
        parser.add_argument(
            "--list", action="store_true", help="List the jobs in the order tick runs them."
        )

    def handle(self, *args, **options):
        if options["list"]:
            if options["now"] or options["job"]:
                raise CommandError("--list takes no --now or --job: it only lists the jobs.")
            self.list_jobs()
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

    def list_jobs(self) -> None:
        """One line per job, in the order tick runs them: order, name, schedule, summary."""
        jobs = all_jobs()
        name_width = max((len(job.name) for job in jobs), default=0)
        rows = [(job, describe_schedule(job.schedule)) for job in jobs]
        schedule_width = max((len(schedule) for _, schedule in rows), default=0)
        for job, schedule in rows:
            line = f"{job.order:>4}  {job.name:<{name_width}}  {schedule:<{schedule_width}}"
            summary = summary_of(job)
            self.stdout.write(f"{line}  {summary}".rstrip() if summary else line.rstrip())
