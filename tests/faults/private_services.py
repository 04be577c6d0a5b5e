"""Private Redis, PostgreSQL and localstripe servers for fault-injection tests.

Fault tests stop, kill and restart servers; they must never do that to the shared ones
(scripts/services.sh's Postgres on 55432 and Redis on 56379, which other tests use at the
same time). These helpers start throwaway servers on free ports under a temporary folder and
remove everything on exit:

    from tests.faults.private_services import private_postgres, private_redis

    with private_redis() as redis:
        redis.url               # redis://127.0.0.1:<port>/0
        redis.stop()            # SIGTERM, wait; redis.kill() is SIGKILL
        redis.start()           # again, same port (no data survives: no persistence)
        redis.pause()           # SIGSTOP: the port accepts connections but nobody answers
        redis.resume()          # SIGCONT

    with private_postgres() as pg:
        pg.url                  # postgres://portal@127.0.0.1:<port>/postgres
        pg.create_database("x") # then pg.url_for("x")
        pg.stop(mode="immediate")   # or "fast" (the default), "smart"
        pg.restart(mode="fast")

    with private_localstripe() as stripe_base:   # http://127.0.0.1:<port>, empty store
        ...                     # override STRIPE_API_BASE with it; the shared one is never reset

They run as child processes of the test, so they work under root (CI) and non-root.
As root, initdb and pg_ctl refuse to run, so they run as the `postgres` user (as
scripts/services.sh's as_pg does); the cluster folder is then created where that user can
reach it (the system temp folder by default; every parent folder must be traversable).
Startup takes about 1-3 s for Postgres and well under a second for Redis.

`celery_broker(url)` points this process's Celery app at another broker (not eager) and
restores it afterwards, for tests that need the real publish path.

`redis_server_binary()` and `postgres_bin_dir()` return None when the binaries are missing;
a test may skip then (CI always has them: scripts/bootstrap.sh installs them).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kombu import pools as kombu_pools

STARTUP_TIMEOUT = 30.0


class ServiceError(RuntimeError):
    """A private server could not be started or stopped."""


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick; tiny race, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, *, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_until(check, *, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = ""
            if log is not None and log.exists():
                tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise ServiceError(f"{what} not ready within {timeout:.0f}s{tail}")
        time.sleep(0.05)


# Redis ----------------------------------------------------------------------------------------


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class PrivateRedis:
    """A redis-server on a free port of 127.0.0.1, no persistence, run as a child process."""

    def __init__(self, *, port: int | None = None, base_dir: str | None = None):
        binary = redis_server_binary()
        if binary is None:
            raise ServiceError("redis-server not found (scripts/bootstrap.sh installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fault-redis-", dir=base_dir))
        self.log = self.dir / "redis.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log),
        ]
        self.process = subprocess.Popen(  # noqa: S603 - fixed binary, our arguments
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=self.dir
        )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise ServiceError(f"redis-server exited at startup (log: {self.log})")
            return self._ping()

        _wait_until(ready, timeout=STARTUP_TIMEOUT, what="redis", log=self.log)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop it (SIGTERM) and wait until the port is closed."""
        self._end(signal.SIGTERM, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crashed or OOM-killed server."""
        self._end(signal.SIGKILL, timeout=10.0)

    def _end(self, sig: int, *, timeout: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)  # a paused server cannot exit
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        _wait_until(lambda: not port_open(self.port), timeout=timeout, what="redis port closed")

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung server)."""
        if self.running:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            self.process.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        self._end(signal.SIGKILL, timeout=10.0)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def _started(service):
    """`service` started, and cleaned up (stopped, folder deleted) on exit, whatever happens."""
    try:
        service.start()
        yield service
    finally:
        service.cleanup()


def private_redis(*, port: int | None = None) -> contextlib.AbstractContextManager[PrivateRedis]:
    """A started private Redis, removed (killed, folder deleted) on exit."""
    return _started(PrivateRedis(port=port))


# PostgreSQL -----------------------------------------------------------------------------------


def postgres_bin_dir() -> str | None:
    """$PG_BIN (scripts/env.sh exports it), else the newest /usr/lib/postgresql/*/bin."""
    candidates = [os.environ.get("PG_BIN", "")]

    def major(path: str) -> int:
        try:
            return int(Path(path).parent.name)
        except ValueError:
            return 0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)
    for candidate in candidates:
        if candidate and os.access(os.path.join(candidate, "pg_ctl"), os.X_OK):
            return candidate
    return None


def _as_root() -> bool:
    return os.geteuid() == 0


def _as_pg(command: list[str]) -> list[str]:
    """initdb and pg_ctl refuse root: run them as `postgres` then (like services.sh's as_pg,
    and like it without libfaketime, which leaks shared memory across a user switch)."""
    if _as_root():
        unset = ["-u", "LD_PRELOAD", "-u", "FAKETIME", "-u", "FAKETIME_SHARED"]
        return ["env", *unset, "runuser", "-u", "postgres", "--", *command]
    return command


def _run_pg(command: list[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
    # cwd "/": postgres may not be allowed into the caller's working directory.
    return subprocess.run(  # noqa: S603 - fixed binaries, our arguments
        _as_pg(command), cwd="/", capture_output=True, text=True, timeout=timeout, check=False
    )


def _cluster_base_dirs() -> list[str]:
    bases = [tempfile.gettempdir(), "/tmp"]  # noqa: S108 - the fallback every user can traverse
    return list(dict.fromkeys(bases))


class PrivatePostgres:
    """A throwaway PostgreSQL cluster: trust auth, superuser `portal`, 127.0.0.1 on a free port,
    socket folder inside the cluster folder, fsync off.

    `durable=False` also turns synchronous_commit off, for speed. A test that crashes the
    server (`stop(mode="immediate")`) and counts what was committed needs `durable=True`:
    without synchronous commits, a COMMIT returns before its WAL is written, and a crash
    within the WAL writer's delay loses it. fsync can stay off there, since the crash is
    the server's and the operating system keeps what was written.
    """

    def __init__(self, *, port: int | None = None, durable: bool = False):
        self.durable = durable
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise ServiceError("PostgreSQL server binaries not found (set PG_BIN)")
        self.bin = Path(bin_dir)
        self.port = port or free_port()
        self.dir = self._make_dir()
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "socket"
        self.log = self.dir / "postgres.log"
        self._initdb()

    def _make_dir(self) -> Path:
        for base in _cluster_base_dirs():
            path = Path(tempfile.mkdtemp(prefix="fault-pg-", dir=base))
            if not _as_root():
                return path
            os.chown(path, *_postgres_ids())
            if _run_pg(["test", "-w", str(path), "-a", "-x", str(path)]).returncode == 0:
                return path
            shutil.rmtree(path, ignore_errors=True)
        raise ServiceError(
            "no folder the postgres user can use for a cluster; set TMPDIR to one it can reach"
        )

    def _initdb(self) -> None:
        result = _run_pg(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "portal",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        result = _run_pg(["mkdir", "-p", str(self.socket_dir)])
        if result.returncode != 0:
            raise ServiceError(f"could not create {self.socket_dir}: {result.stderr}")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# fault-test cluster (tests/faults/private_services.py)\n"
                "listen_addresses = '127.0.0.1'\n"
                "fsync = off\nfull_page_writes = off\n"
                f"synchronous_commit = {'on' if self.durable else 'off'}\n"
            )

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgres://portal@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return _run_pg([str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]).returncode == 0

    def start(self) -> None:
        if self.running:
            return
        # -o is parsed by /bin/sh inside pg_ctl, hence the inner quotes.
        result = _run_pg(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(int(STARTUP_TIMEOUT)),
                "-o",
                f"-p {self.port} -k '{self.socket_dir}'",
                "start",
            ],
            timeout=STARTUP_TIMEOUT + 10,
        )
        if result.returncode != 0:
            raise ServiceError(f"pg_ctl start failed:\n{result.stderr}\n{self._log_tail()}")
        _wait_until(self._accepts, timeout=STARTUP_TIMEOUT, what="postgres", log=self.log)

    def _client(self, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
        """A client program (pg_isready, createdb) against this cluster, as `portal`."""
        return subprocess.run(  # noqa: S603 - the cluster's binaries, our arguments
            [str(self.bin / tool), "-h", "127.0.0.1", "-p", str(self.port), "-U", "portal", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def _accepts(self) -> bool:
        result = self._client("pg_isready", "-d", "postgres", "-t", "1", "-q", timeout=10)
        return result.returncode == 0

    def stop(self, *, mode: str = "fast", timeout: float = 30.0) -> None:
        """pg_ctl stop: "smart" waits for clients, "fast" disconnects them, "immediate" is a
        crash (no shutdown checkpoint; recovery runs at the next start)."""
        if mode not in {"smart", "fast", "immediate"}:
            raise ValueError(f"unknown pg_ctl stop mode {mode!r}")
        if not self.running:
            return
        result = _run_pg(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            ],
            timeout=timeout + 10,
        )
        if result.returncode != 0:
            raise ServiceError(f"pg_ctl stop failed:\n{result.stderr}\n{self._log_tail()}")

    def restart(self, *, mode: str = "fast") -> None:
        self.stop(mode=mode)
        self.start()

    def create_database(self, name: str) -> str:
        """Create a database (owned by portal) and return its URL."""
        result = self._client("createdb", name, timeout=30)
        if result.returncode != 0:
            raise ServiceError(f"createdb {name} failed: {result.stderr}")
        return self.url_for(name)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        with contextlib.suppress(ServiceError, subprocess.TimeoutExpired):
            self.stop(mode="immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def private_postgres(
    *, port: int | None = None, durable: bool = False
) -> contextlib.AbstractContextManager[PrivatePostgres]:
    """A started private PostgreSQL cluster, stopped (immediate) and deleted on exit."""
    return _started(PrivatePostgres(port=port, durable=durable))


# localstripe ----------------------------------------------------------------------------------

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def private_localstripe() -> Iterator[str]:
    """A private localstripe (scripts/localstripe_server.py) on a free port; yields its base URL.

    Tests that count PaymentIntents, or kill processes mid-charge, use their own so that they
    never empty (`DELETE /_config/data`) the shared one other test runs are using.
    """
    import urllib.request

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_dir = Path(tempfile.mkdtemp(prefix="fault-stripe-"))
    log = log_dir / "localstripe.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our interpreter, our script
            [sys.executable, str(PROJECT_ROOT / "scripts" / "localstripe_server.py")],
            env={**os.environ, "STRIPE_PORT": str(port)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise ServiceError(f"localstripe exited at startup (log: {log})")
        request = urllib.request.Request(  # noqa: S310 - loopback http
            f"{base}/v1/customers?limit=1", headers={"Authorization": "Bearer sk_test_ready"}
        )
        try:
            with urllib.request.urlopen(request, timeout=1):  # noqa: S310
                return True
        except OSError:
            return False

    try:
        _wait_until(ready, timeout=STARTUP_TIMEOUT, what="localstripe", log=log)
        yield base
    finally:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(log_dir, ignore_errors=True)


# Celery ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def celery_broker(url: str) -> Iterator[None]:
    """Point this process's Celery app (billing_portal.celery.app) at `url`, publishing for
    real (task_always_eager off), and restore the app's broker afterwards.

    The app caches its connection pools; they are closed and dropped on the way in and out so
    the next publish connects to the broker that is configured then. Combine it with
    override_settings(CELERY_BROKER_URL=url, CELERY_TASK_ALWAYS_EAGER=False) when the code under
    test reads the settings.
    """
    from django.conf import settings

    from billing_portal.celery import app

    # What to restore is the settings' own configuration (the app reads Django settings
    # lazily: inside an override_settings the conf would hand back the overrides).
    saved = {
        "broker_url": settings.CELERY_BROKER_URL,
        "task_always_eager": settings.CELERY_TASK_ALWAYS_EAGER,
    }

    def reset_pools() -> None:
        # The app's pools live in kombu's process-wide registry: closing one without clearing
        # the registry would hand later publishes (eager ones too) a closed pool.
        kombu_pools.reset()
        app._pool = None
        with contextlib.suppress(AttributeError, KeyError):
            app.__dict__["amqp"]._producer_pool = None

    reset_pools()
    app.conf.broker_url = url
    app.conf.task_always_eager = False
    try:
        yield
    finally:
        reset_pools()
        app.conf.update(saved)
