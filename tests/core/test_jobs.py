import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import Invitation
from billing_portal.celery import _schedule_registered_jobs, app
from core.jobs import all_jobs, run_job
from tests.accounts.factories import InvitationFactory

pytestmark = pytest.mark.django_db


def test_registry_holds_the_first_jobs_in_order():
    names = [job.name for job in all_jobs()]
    assert names.index("expire_invitations") < names.index("deliver_pending_emails")


def test_beat_schedule_is_built_from_the_same_registry():
    _schedule_registered_jobs(app)
    schedule = app.conf.beat_schedule
    for job in all_jobs():
        assert schedule[job.name]["task"] == "billing_portal.run_scheduled_job"
        assert schedule[job.name]["args"] == (job.name,)


def test_tick_runs_every_job_as_of_now_and_is_safe_twice(org):
    invitation = InvitationFactory(organisation=org)
    later = (invitation.expires_at + timedelta(seconds=1)).isoformat()
    out = StringIO()
    call_command("tick", "--now", later, stdout=out)
    assert "expire_invitations: 1 invitation(s) expired" in out.getvalue()
    assert "deliver_pending_emails:" in out.getvalue()
    out = StringIO()
    call_command("tick", "--now", later, stdout=out)
    assert "expire_invitations: 0 invitation(s) expired" in out.getvalue()
    assert Invitation.objects.get().status == "expired"


def test_tick_before_expiry_changes_nothing(org):
    invitation = InvitationFactory(organisation=org)
    call_command(
        "tick",
        "--now",
        (invitation.expires_at - timedelta(seconds=1)).isoformat(),
        stdout=StringIO(),
    )
    assert Invitation.objects.get().status == "pending"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--now", "yesterday"], "is not an ISO-8601 date-time"),
        (["--now", "2026-11-27T10:00:00"], "needs a UTC offset or Z"),
        (["--job", "nope"], "No scheduled job named 'nope'"),
        (["--list", "--job", "expire_invitations"], "--list takes no --now or --job"),
        (["--list", "--now", "2026-11-27T10:00:00Z"], "--list takes no --now or --job"),
        (["--bogus"], "Unrecognized arguments: --bogus"),
    ],
)
def test_tick_refuses_bad_input_with_one_line(args, message):
    with pytest.raises(CommandError, match=message) as caught:
        call_command("tick", *args)
    assert "\n" not in str(caught.value)


def test_tick_list_names_every_job_in_the_order_tick_runs_them():
    out = StringIO()
    call_command("tick", "--list", stdout=out)
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == [job.name for job in all_jobs()]
    assert [int(line.split()[0]) for line in lines] == [job.order for job in all_jobs()]
    by_name = {line.split()[1]: line for line in lines}
    assert "every minute" in by_name["deliver_pending_emails"]
    assert "every 15 minutes" in by_name["billing_run"]
    assert "daily at 08:00" in by_name["card_expiry_reminders"]


def test_every_job_says_what_it_does():
    """`tick --list` prints each job's docstring: a job without one shows a blank column."""
    assert [job.name for job in all_jobs() if not (job.func.__doc__ or "").strip()] == []


def test_readme_job_list_is_what_tick_list_prints():
    out = StringIO()
    call_command("tick", "--list", stdout=out)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("$ python manage.py tick --list\n", 1)[1].split("```", 1)[0]
    assert block == out.getvalue(), "README's job list is stale: paste `manage.py tick --list`"


def test_tick_list_runs_nothing(org):
    InvitationFactory(organisation=org, expires_at=timezone.now() - timedelta(minutes=1))
    call_command("tick", "--list", stdout=StringIO())
    assert Invitation.objects.get().status == "pending"


def test_tick_exits_non_zero_from_the_shell():
    result = subprocess.run(
        [sys.executable, "manage.py", "tick", "--now", "not-a-date"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "CommandError: --now 'not-a-date' is not an ISO-8601 date-time (e.g. 2026-11-27T09:00:00Z)."
    )


def test_tick_refuses_an_unknown_argument_from_the_shell_with_one_line():
    result = subprocess.run(
        [sys.executable, "manage.py", "tick", "--bogus"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == "CommandError: Unrecognized arguments: --bogus.\n"


def test_run_job_refuses_a_naive_datetime():
    with pytest.raises(ValueError, match="aware datetime"):
        run_job("expire_invitations", now=timezone.now().replace(tzinfo=None))


def test_celery_task_runs_a_job_through_the_broker_settings(org):
    from core.tasks import run_scheduled_job

    InvitationFactory(organisation=org, expires_at=timezone.now() - timedelta(minutes=1))
    assert run_scheduled_job.delay("expire_invitations").get() == "1 invitation(s) expired"
