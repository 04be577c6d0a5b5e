#!/usr/bin/env bash
# Project-local PostgreSQL, Redis and localstripe (the Stripe stand-in) for development
# and tests.
#
#   scripts/services.sh start                              start what is not running (idempotent)
#   scripts/services.sh stop [postgres|redis|localstripe]  stop the given services (default: all)
#   scripts/services.sh status                             exit 0 if all are up, 3 otherwise
#
# `start` writes the services IT started (one per line) to $RUN_DIR/started-services,
# so a caller can later stop only those: `services.sh stop $(cat .run/started-services)`.
# Ports come from PG_PORT / REDIS_PORT / STRIPE_PORT (see env.sh).
set -euo pipefail

# shellcheck source=scripts/env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

TIMEOUT="${SERVICES_TIMEOUT:-30}"          # seconds to wait for readiness
STARTED_FILE="$RUN_DIR/started-services"
LOCAL_PG_DIR="$RUN_DIR/pg"                  # preferred cluster location
TMP_PG_DIR="$PG_TMP_BASE/pg"                # fallback when postgres can't reach .run
REDIS_PID="$RUN_DIR/redis.pid"
REDIS_LOG="$RUN_DIR/redis.log"
STRIPE_PID="$RUN_DIR/localstripe.pid"
STRIPE_LOG="$RUN_DIR/localstripe.log"
VENV_PYTHON="$PROJECT_ROOT/.venv/bin/python"

log() { echo "services: $*"; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/pg_ctl" ]; then
    die "PostgreSQL server binaries not found (PG_BIN='$PG_BIN'); run scripts/bootstrap.sh"
fi
command -v redis-server >/dev/null || die "redis-server not found; run scripts/bootstrap.sh"
[ -x "$VENV_PYTHON" ] || die "$VENV_PYTHON not found; run scripts/bootstrap.sh"

# initdb and pg_ctl refuse to run as root, so as root we switch to `postgres`.
# `cd /` because postgres may not be allowed into the caller's cwd. Without libfaketime
# (make test-dates): Postgres keeps the real clock anyway, and libfaketime loaded into a process
# that switches user leaves a shared-memory segment named after its pid, which fails a later
# run's process that gets the same pid ("sem_open failed ... Permission denied").
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd / && env -u LD_PRELOAD -u FAKETIME -u FAKETIME_SHARED runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Serialize start/stop between concurrent callers (run.sh + test.sh). Every
# daemon we launch gets `9>&-` so it does not inherit (and keep holding) the lock.
take_lock() {
    mkdir -p "$RUN_DIR"
    exec 9>>"$RUN_DIR/services.lock"
    flock -w 120 9 || die "timed out waiting for $RUN_DIR/services.lock"
}

# Size of a log file, so errors can show only what this start appended to it.
log_size() { stat -c %s "$1" 2>/dev/null || echo 0; }
show_new_log() {  # file offset
    [ -f "$1" ] && tail -c "+$(($2 + 1))" "$1" | tail -n 15 | sed 's/^/    | /' >&2
    return 0
}

# Poll CHECK until it succeeds or TIMEOUT passes; bail out early if ALIVE fails.
wait_for() {
    local name=$1 check=$2 alive=$3 logfile=$4 offset=$5 deadline=$((SECONDS + TIMEOUT))
    until "$check"; do
        if ! "$alive"; then
            show_new_log "$logfile" "$offset"
            die "$name exited during startup (log: $logfile)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_new_log "$logfile" "$offset"
            die "$name did not become ready within ${TIMEOUT}s (log: $logfile)"
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------- postgres --

# -U/-d only so the server doesn't log 'role "root" does not exist' for every probe.
pg_ready() { "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -U portal -d postgres -t 2 -q; }

psql_portal() {
    PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$PG_PORT" -U portal "$@"
}

# The folder of an initialized cluster of this checkout, or nothing.
existing_cluster() {
    local d
    for d in "$LOCAL_PG_DIR" "$TMP_PG_DIR"; do
        if [ -f "$d/data/PG_VERSION" ]; then echo "$d"; return 0; fi
    done
}

# Pick (and create) the cluster folder for a new cluster. Prefer .run/pg, but the
# `postgres` user must be able to traverse every parent folder, which fails e.g.
# for a checkout under /root; then use $TMPDIR. Also skip a location whose unix
# socket path would exceed the kernel's 107-byte limit (deep CI checkouts).
choose_cluster_dir() {
    local d sock
    for d in "$LOCAL_PG_DIR" "$TMP_PG_DIR"; do
        sock="$d/socket/.s.PGSQL.$PG_PORT"
        if [ "${#sock}" -gt 100 ]; then
            echo "services: note: socket path too long under $d, skipping it" >&2
            continue
        fi
        if [ "$d" = "$TMP_PG_DIR" ]; then
            mkdir -p "$PG_TMP_BASE"
            [ -O "$PG_TMP_BASE" ] || die "$PG_TMP_BASE exists but belongs to another user"
            chmod go+x "$PG_TMP_BASE"
        else
            chmod go+x "$RUN_DIR"   # harmless, and lets postgres in under a strict umask
        fi
        mkdir -p "$d"
        if [ "$(id -u)" -eq 0 ]; then
            chown postgres:postgres "$d"
            if ! as_pg test -w "$d" -a -x "$d"; then
                echo "services: note: user postgres cannot use $d, trying next location" >&2
                rmdir "$d" 2>/dev/null || true
                continue
            fi
        fi
        echo "$d"
        return 0
    done
    die "no usable folder for the Postgres cluster (tried $LOCAL_PG_DIR and $TMP_PG_DIR); set TMPDIR to a folder user postgres can reach"
}

init_cluster() {
    local d=$1 locale_opts=(--no-locale)
    # A half-finished earlier initdb leaves a non-empty data dir that initdb rejects.
    rm -rf "$d/data"
    as_pg mkdir -p "$d/socket"
    # C.UTF-8 when available so upper()/lower() handle non-ASCII; plain C otherwise.
    if locale -a 2>/dev/null | grep -qixE 'c\.utf-?8'; then locale_opts=(--locale=C.UTF-8); fi
    log "initializing Postgres cluster in $d"
    as_pg "$PG_BIN/initdb" -D "$d/data" -U portal --auth=trust --encoding=UTF8 \
        "${locale_opts[@]}" --no-sync >"$d/initdb.log" 2>&1 \
        || die "initdb failed (log: $d/initdb.log)"
    # Throwaway dev/test cluster: durability off for speed. Port and socket dir
    # are passed at start instead, so PG_PORT overrides and moved checkouts work.
    cat >>"$d/data/postgresql.conf" <<'CONF'

# --- billing-portal dev cluster (scripts/services.sh) ---
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
}

start_pg() {
    local d offset
    if pg_ready; then
        log "postgres already running on 127.0.0.1:$PG_PORT, reusing it"
    else
        d="$(existing_cluster)"
        if [ -z "$d" ]; then
            d="$(choose_cluster_dir)"
            init_cluster "$d"
        fi
        as_pg mkdir -p "$d/socket"
        offset="$(log_size "$d/postgres.log")"
        log "starting postgres on 127.0.0.1:$PG_PORT (cluster: $d)"
        echo postgres >>"$STARTED_FILE"   # record before waiting: a caller's trap must stop it even if readiness fails
        # pg_ctl -w waits for readiness and notices an early crash (e.g. port taken).
        # -o is parsed by /bin/sh inside pg_ctl, hence the inner single quotes.
        if ! as_pg "$PG_BIN/pg_ctl" -D "$d/data" -l "$d/postgres.log" -w -t "$TIMEOUT" \
            -o "-p $PG_PORT -k '$d/socket'" start >/dev/null 2>&1 9>&-; then
            show_new_log "$d/postgres.log" "$offset"
            die "postgres failed to start or was not ready within ${TIMEOUT}s (log: $d/postgres.log)"
        fi
        wait_for postgres pg_ready true "$d/postgres.log" "$offset"  # same check clients use
    fi
    ensure_database
}

ensure_database() {
    local exists
    exists="$(psql_portal -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'billing_portal'")" \
        || die "cannot connect to 127.0.0.1:$PG_PORT as role 'portal' (another Postgres on that port?)"
    if [ "$exists" != 1 ]; then
        psql_portal -d postgres -c 'CREATE DATABASE billing_portal OWNER portal' \
            || die "could not create database billing_portal"
        log "created database billing_portal"
    fi
}

stop_pg() {
    local d
    d="$(existing_cluster)"
    if [ -n "$d" ] && as_pg "$PG_BIN/pg_ctl" -D "$d/data" status >/dev/null 2>&1; then
        as_pg "$PG_BIN/pg_ctl" -D "$d/data" -m fast -w -t "$TIMEOUT" stop >/dev/null \
            || die "pg_ctl stop failed (log: $d/postgres.log)"
        log "postgres stopped"
    elif pg_ready; then
        log "postgres on port $PG_PORT was not started from this checkout; leaving it alone"
    else
        log "postgres not running"
    fi
}

status_pg() {
    local d
    d="$(existing_cluster)"
    if pg_ready; then
        log "postgres: running on 127.0.0.1:$PG_PORT (cluster: ${d:-not from this checkout})"
    else
        log "postgres: not running (port $PG_PORT, cluster: ${d:-not initialized})"
        return 1
    fi
}

# ------------------------------------------------------------------- redis --

redis_ready() { [ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

# PID of the redis-server we started, if it is still alive.
redis_pid() {
    local pid
    pid="$(cat "$REDIS_PID" 2>/dev/null || true)"
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ] && echo "$pid"
}

start_redis() {
    if redis_ready; then
        log "redis already running on 127.0.0.1:$REDIS_PORT, reusing it"
        return 0
    fi
    local offset
    offset="$(log_size "$REDIS_LOG")"
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    echo redis >>"$STARTED_FILE"
    rm -f "$REDIS_PID"
    # No persistence: it is a broker/cache for dev and tests only.
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" --dir "$RUN_DIR" 9>&- \
        || die "redis-server failed to start (log: $REDIS_LOG)"
    # The daemon forks before binding its port and only then writes the pid file, so
    # a failed start (port taken) shows up in the log only.
    redis_alive() { ! tail -c "+$((offset + 1))" "$REDIS_LOG" 2>/dev/null | grep -q 'aborting'; }
    wait_for redis redis_ready redis_alive "$REDIS_LOG" "$offset"
}

stop_redis() {
    local pid
    pid="$(redis_pid || true)"
    if [ -n "$pid" ]; then
        kill -TERM "$pid"
        for _ in $(seq 1 $((TIMEOUT * 5))); do
            [ -d "/proc/$pid" ] || break
            sleep 0.2
        done
        [ -d "/proc/$pid" ] && die "redis (pid $pid) did not stop within ${TIMEOUT}s"
        rm -f "$REDIS_PID"
        log "redis stopped"
    elif redis_ready; then
        log "redis on port $REDIS_PORT was not started from this checkout; leaving it alone"
    else
        log "redis not running"
    fi
}

status_redis() {
    if redis_ready; then
        log "redis: running on 127.0.0.1:$REDIS_PORT (pid: $(redis_pid || echo 'not this checkout'))"
    else
        log "redis: not running (port $REDIS_PORT)"
        return 1
    fi
}

# ------------------------------------------------------------- localstripe --

# Ready = the port answers like localstripe (a Stripe list), not merely accepts connections.
localstripe_ready() {
    "$VENV_PYTHON" - "http://127.0.0.1:$STRIPE_PORT/v1/customers?limit=1" <<'PY' 2>/dev/null
import json, sys, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer sk_test_ready"})
with urllib.request.urlopen(request, timeout=2) as response:
    sys.exit(0 if json.load(response).get("object") == "list" else 1)
PY
}

# PID of the localstripe we started, if it is still alive.
localstripe_pid() {
    local pid
    pid="$(cat "$STRIPE_PID" 2>/dev/null || true)"
    [ -n "$pid" ] && grep -qa 'localstripe_server\.py' "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

start_localstripe() {
    if localstripe_ready; then
        log "localstripe already running on 127.0.0.1:$STRIPE_PORT, reusing it"
        return 0
    fi
    local offset pid
    pid="$(localstripe_pid || true)"
    if [ -n "$pid" ]; then  # e.g. started with another STRIPE_PORT; keep its pid file
        die "localstripe of this checkout (pid $pid) is running but not answering on port $STRIPE_PORT; stop it first"
    fi
    offset="$(log_size "$STRIPE_LOG")"
    log "starting localstripe on 127.0.0.1:$STRIPE_PORT"
    echo localstripe >>"$STARTED_FILE"
    # setsid: its own session, so a Ctrl-C meant for run.sh's dev server doesn't kill it
    # (run.sh's exit trap stops it). In a script a background child is not a group
    # leader, so setsid execs in place and $! is the server's pid.
    setsid "$VENV_PYTHON" "$PROJECT_ROOT/scripts/localstripe_server.py" \
        >>"$STRIPE_LOG" 2>&1 </dev/null 9>&- &
    echo "$!" >"$STRIPE_PID"
    localstripe_alive() { [ -n "$(localstripe_pid)" ]; }
    wait_for localstripe localstripe_ready localstripe_alive "$STRIPE_LOG" "$offset"
}

stop_localstripe() {
    local pid
    pid="$(localstripe_pid || true)"
    if [ -n "$pid" ]; then
        kill -TERM "$pid"
        for _ in $(seq 1 $((TIMEOUT * 5))); do
            [ -d "/proc/$pid" ] || break
            sleep 0.2
        done
        [ -d "/proc/$pid" ] && die "localstripe (pid $pid) did not stop within ${TIMEOUT}s"
        rm -f "$STRIPE_PID"
        log "localstripe stopped"
    elif localstripe_ready; then
        log "localstripe on port $STRIPE_PORT was not started from this checkout; leaving it alone"
    else
        log "localstripe not running"
    fi
}

status_localstripe() {
    if localstripe_ready; then
        log "localstripe: running on 127.0.0.1:$STRIPE_PORT (pid: $(localstripe_pid || echo 'not this checkout'))"
    else
        log "localstripe: not running (port $STRIPE_PORT)"
        return 1
    fi
}

# -------------------------------------------------------------------- main --

cmd="${1:-}"
shift || true
case "$cmd" in
    start)
        take_lock
        : >"$STARTED_FILE"
        start_pg
        start_redis
        start_localstripe
        if [ -s "$STARTED_FILE" ]; then
            log "started by this call: $(tr '\n' ' ' <"$STARTED_FILE")(listed in $STARTED_FILE)"
        else
            log "started by this call: nothing (all were already running)"
        fi
        ;;
    stop)
        take_lock
        [ "$#" -gt 0 ] || set -- localstripe redis postgres
        for svc in "$@"; do
            case "$svc" in
                postgres) stop_pg ;;
                redis) stop_redis ;;
                localstripe) stop_localstripe ;;
                *) die "unknown service '$svc' (expected postgres, redis or localstripe)" ;;
            esac
        done
        ;;
    status)
        rc=0
        status_pg || rc=3
        status_redis || rc=3
        status_localstripe || rc=3
        exit "$rc"
        ;;
    *)
        echo "usage: $0 start | stop [postgres|redis|localstripe]... | status" >&2
        exit 2
        ;;
esac
