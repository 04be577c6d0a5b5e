#!/usr/bin/env bash
# The whole suite with the machine clock moved by libfaketime. pytest, the live server, every
# process the tests start (gunicorn, Celery, tick, the test IdP), Chromium and localstripe run
# on the moved clock; Postgres and Redis keep the real one (see realclock_shims): the product
# never asks either for the time, and tests/core/test_clock.py holds it to that. One line per
# instant says how it went; the exit code is 1 if any instant failed.
#
#   scripts/test_dates.sh                      every instant of `instants` below
#   scripts/test_dates.sh 2028-02-29T23:40Z    only these instants (UTC)
#   scripts/test_dates.sh --ci                 the one instant of today's day of the year
#   scripts/test_dates.sh --list               the instants, and which one --ci picks today
#   TEST_DATES_ARGS='-x -k invoices' scripts/test_dates.sh   extra pytest arguments
#
# The clock moves by an offset, not to a start instant: libfaketime's "@instant" starts the
# clock at that instant again in every new process (the test IdP, gunicorn and tick, started
# mid-run, would lag the test process), while "+N seconds" is one shift for all. Each instant
# gets fresh services of its own (other ports, a new cluster), so the services a developer
# has running, on the real clock, are never used.
set -euo pipefail

# The instants, in UTC. The relative ones are taken from the real date.
instants() {
    date -u -d "+1 year +1 month" +%Y-%m-%dT%H:%MZ   # a year and a month after today
    echo 2028-02-29T23:40Z                            # the end of a leap day
    echo 2027-03-28T00:30Z                            # the night Europe changes to summer time
    echo 2027-11-07T05:30Z                            # the night the United States changes back
    echo 2027-12-31T23:50Z                            # the end of a year: invoice numbers restart
    date -u -d "-1 month" +%Y-%m-%dT%H:%MZ            # a month before today
}

ci_instant() {
    # Over the days of a year every instant comes up; 10# keeps "089" from reading as octal.
    local all
    mapfile -t all < <(instants)
    echo "${all[$((10#$(date -u +%j) % ${#all[@]}))]}"
}

# Wrappers that run Postgres's and Redis's programs outside libfaketime, in folders put where
# the scripts and the tests look for them (PATH, PG_BIN). Under libfaketime 0.9.10:
# - Redis and redis-cli hang: jemalloc recurses in clock_gettime.
# - Postgres misses its own timers once the clock is moved forward: a timer's signal handler
#   reads the real time while the process waits in a call libfaketime intercepted, finds the
#   deadline (on the moved clock) not reached and waits again, so lock_timeout,
#   statement_timeout and the deadlock check never fire.
realclock_shims() {
    local shims=$1 real_pg_bin=$2 program
    rm -rf -- "$shims"
    mkdir -p "$shims/bin" "$shims/pg"
    for program in "$(command -v redis-server)" "$(command -v redis-cli)"; do
        realclock_wrapper "$program" "$shims/bin/$(basename -- "$program")"
    done
    for program in "$real_pg_bin"/*; do
        realclock_wrapper "$program" "$shims/pg/$(basename -- "$program")"
    done
}

# libfaketime's shared memory and semaphore, named after the pid of the `faketime` that made
# them, stay behind when a run is killed; a later process given the same pid cannot reuse a
# pair another user owns. Only those of processes no longer running go.
stale_faketime_segments_remove() {
    local segment pid
    for segment in /dev/shm/faketime_shm_* /dev/shm/sem.faketime_sem_*; do
        [ -e "$segment" ] || continue
        pid="${segment##*_}"
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f -- "$segment" 2>/dev/null || true
        fi
    done
}

realclock_wrapper() {  # real program, wrapper
    printf '#!/bin/sh\nunset LD_PRELOAD FAKETIME FAKETIME_SHARED FAKETIME_DONT_FAKE_MONOTONIC\nexec %q "$@"\n' \
        "$1" >"$2"
    chmod +x "$2"
}

# Under faketime: this instant's services (Postgres and Redis through the wrappers), pytest.
inside() {
    local label=$1
    # shellcheck source=scripts/env.sh
    source scripts/env.sh
    export DJANGO_ALLOW_ASYNC_UNSAFE=true
    export TEST_CLOCK_LABEL="$label (moved by libfaketime, FAKETIME=$FAKETIME)"
    trap bp_services_stop_started EXIT
    bp_services_start >/dev/null
    # shellcheck disable=SC2086  # TEST_DATES_ARGS is word-split on purpose
    pytest ${TEST_DATES_ARGS:-}
}

main() {
    SECONDS=0
    cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
    local root chosen=() results=() failed=0 instant target label log offset rc summary
    root="$(pwd -P)"
    case "${1:-}" in
        --inside)
            inside "$2"
            return
            ;;
        --list)
            instants
            echo "--ci today: $(ci_instant)"
            return 0
            ;;
        --ci) mapfile -t chosen < <(ci_instant) ;;
        "") mapfile -t chosen < <(instants) ;;
        *) chosen=("$@") ;;
    esac

    for instant in "${chosen[@]}"; do
        date -u -d "${instant/T/ }" +%s >/dev/null 2>&1 \
            || { echo "test_dates: ERROR: '$instant' is not a date and time (e.g. 2028-02-29T23:40Z)" >&2; return 2; }
    done
    bash scripts/bootstrap.sh
    command -v faketime >/dev/null || { echo "test_dates: ERROR: faketime is missing" >&2; return 1; }

    # Services of their own beside any a developer runs (env.sh derives the rest), on ports
    # below the ephemeral range (32768 and up), which outgoing connections may hold.
    export PG_PORT="${TEST_DATES_PG_PORT:-25442}"
    export REDIS_PORT="${TEST_DATES_REDIS_PORT:-26389}"
    export STRIPE_PORT="${TEST_DATES_STRIPE_PORT:-28430}"
    export RUN_DIR="$root/.run/dates"
    # The Postgres cluster's fallback folder follows TMPDIR: keep it apart from make test's.
    # The wrappers live there too: user postgres runs them, and may not reach the checkout.
    export TMPDIR="${TMPDIR:-/tmp}/billing-portal-dates"
    mkdir -p "$TMPDIR"
    chmod 755 "$TMPDIR"
    unset DATABASE_URL REDIS_URL STRIPE_API_BASE
    # shellcheck source=scripts/env.sh
    source scripts/env.sh
    realclock_shims "$TMPDIR/realclock" "$PG_BIN"
    export PG_BIN="$TMPDIR/realclock/pg" PATH="$TMPDIR/realclock/bin:$PATH"
    # Monotonic clocks stay real, and Python sleeps in spite of that (scripts/moved_clock/).
    export FAKETIME_DONT_FAKE_MONOTONIC=1
    export PYTHONPATH="$root/scripts/moved_clock${PYTHONPATH:+:$PYTHONPATH}"

    for instant in "${chosen[@]}"; do
        target="$(date -u -d "${instant/T/ }" +%s)"
        label="$(date -u -d "@$target" '+%Y-%m-%d %H:%M UTC')"
        log="$root/.run/dates-$(date -u -d "@$target" +%Y%m%dT%H%MZ).log"
        # Fresh services each time: nothing carries over from one instant to the next.
        bash scripts/services.sh stop >/dev/null 2>&1 || true
        rm -rf -- "$RUN_DIR" "$PG_TMP_BASE"
        mkdir -p "$RUN_DIR"
        stale_faketime_segments_remove
        offset=$((target - $(date -u +%s)))
        echo "test_dates: the suite at $label (offset ${offset}s, log: $log)"
        set +e
        faketime -f "$(printf '%+ds' "$offset")" bash scripts/test_dates.sh --inside "$label" \
            2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        set -e
        bash scripts/services.sh stop >/dev/null 2>&1 || true
        summary="$(grep -E '^=* ?[0-9]+ (passed|failed|errors?)' "$log" | tail -n 1 | tr -d '=' \
            | sed -E 's/^ +| +$//g')"
        [ -n "$summary" ] || summary="no pytest summary (exit code $rc)"
        if [ "$rc" -eq 0 ]; then
            results+=("PASS  $label  $summary")
        else
            results+=("FAIL  $label  $summary")
            failed=1
        fi
    done

    echo
    echo "test_dates: ${#chosen[@]} instant(s) in ${SECONDS}s"
    printf '  %s\n' "${results[@]}"
    return "$failed"
}

# Parsed whole before it runs (and never read again after `main`): editing this file during
# a run cannot break the run.
main "$@"; exit
