"""`make run` (scripts/run.sh) stops everything it started, on a TERM as on Ctrl-C.

Each test starts the script with its own ports and the module's RUN_DIR (a fresh folder, as
in a new clone, for the first; the second finds what the first left), so it never touches the
services the rest of the suite uses. SEED_DEMO=0 skips the
demo data (tests/core/test_seed_demo.py covers it); everything else starts as for a developer.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The variables env.sh and run.sh derive from the ports and RUN_DIR: the test's own values
# (pytest's settings module, its database) must not leak into the script.
DERIVED = (
    "DJANGO_SETTINGS_MODULE",
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "STRIPE_API_BASE",
    "EMAIL_FILE_PATH",
    "SITE_URL",
    "DEMO_IDP_URL",
    "DEMO_IDP_KEY_DIR",
    "DEBUG",
)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time, command line + environment) of every process now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            text = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), fields[19], text.decode(errors="replace"))
    return found


def started_by(script_pid: int, run_dir: str) -> dict[int, str]:
    """pid -> start time of what the run started: the script's descendants, and the daemons
    that left its tree (Postgres, Redis, localstripe), found by the run folder they were
    started with."""
    table = processes()
    ours = {pid for pid, (_, _, text) in table.items() if run_dir in text}
    ours.add(script_pid)
    grew = True
    while grew:
        children = {pid for pid, (parent, _, _) in table.items() if parent in ours}
        grew = not children <= ours
        ours |= children
    return {pid: table[pid][1] for pid in ours if pid in table}


def still_running(started: dict[int, str]) -> list[str]:
    table = processes()
    return [
        f"{pid}: {table[pid][2].split(chr(0))[0]}"
        for pid, start in started.items()
        if pid in table and table[pid][1] == start
    ]


def wait_for_page(url: str, script: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if script.poll() is not None:
            pytest.fail(f"run.sh exited with {script.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)  # noqa: S310 - our own loopback server
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the dev server did not answer within {seconds}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def run_dir():
    """One folder for the module: the first run starts in a fresh clone's state (no .run
    yet), the second finds the cluster the first left, as a second `make run` does."""
    # Not pytest's tmp_path: the `postgres` user must reach the cluster folder (0700 there).
    path = tempfile.mkdtemp(prefix="run-script-test-")
    os.chmod(path, 0o755)  # noqa: S103 - a throwaway folder Postgres must enter
    yield Path(path) / ".run"  # does not exist yet, as in a fresh clone
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    ("how", "exit_code"),
    [("TERM, as a process supervisor", 143), ("Ctrl-C in the terminal", 130)],
)
def test_run_stops_everything_it_started(run_dir, how, exit_code):
    pg, redis, stripe, web, idp = ports = free_ports(5)
    env = {key: value for key, value in os.environ.items() if key not in DERIVED}
    env.update(
        PG_PORT=str(pg),
        REDIS_PORT=str(redis),
        STRIPE_PORT=str(stripe),
        PORT=str(web),
        IDP_PORT=str(idp),
        RUN_DIR=str(run_dir),
        SEED_DEMO="0",
    )
    log = run_dir.parent / "run.log"
    with log.open("w") as out:
        # Its own process group, as a terminal gives a job: Ctrl-C goes to the whole group.
        script = subprocess.Popen(
            ["bash", str(ROOT / "scripts/run.sh")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for_page(f"http://127.0.0.1:{web}/accounts/login/", script, log, 75)
        wait_for_page(f"http://127.0.0.1:{idp}/metadata", script, log, 10)
        started = started_by(script.pid, str(run_dir))
        # The script, Postgres, Redis, localstripe, Celery worker and beat, the IdP, the server.
        assert len(started) >= 8, started
        if exit_code == 143:
            script.send_signal(signal.SIGTERM)
        else:
            os.killpg(script.pid, signal.SIGINT)
        assert script.wait(timeout=40) == exit_code, log.read_text()[-3000:]
        assert still_running(started) == []
        assert [port for port in ports if port_open(port)] == []
    finally:
        # Whatever went wrong above, leave no server of this test behind.
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()
        subprocess.run(
            ["bash", str(ROOT / "scripts/services.sh"), "stop"],
            env=env,
            capture_output=True,
            check=False,
        )
        for pid in started_by(script.pid, str(run_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
