#!/usr/bin/env bash
# Run the whole app locally: Postgres, Redis, localstripe, migrations, demo data, Celery
# worker + beat, the local test IdP (for the demo's SSO) and Django's dev server.
# Ctrl-C, or a TERM (as a process supervisor sends), stops everything this script started
# (and only that: services that were already running are left alone).
#
#   PORT=8000        the dev server's port
#   IDP_PORT=58480   the test IdP's port (its key pair is kept in $RUN_DIR/idp)
#   SEED_DEMO=0      start without loading the demo data (e.g. on a database you filled yourself)
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh

# Dev defaults; the settings read these from the environment.
export DEBUG="${DEBUG:-1}"
PORT="${PORT:-8000}"
export SITE_URL="${SITE_URL:-http://127.0.0.1:$PORT}"
# seed_demo configures Globex's SSO for this IdP (portal/demo.py reads both).
IDP_PORT="${IDP_PORT:-58480}"
export DEMO_IDP_URL="${DEMO_IDP_URL:-http://127.0.0.1:$IDP_PORT}"
export DEMO_IDP_KEY_DIR="${DEMO_IDP_KEY_DIR:-$RUN_DIR/idp}"
SEED_DEMO="${SEED_DEMO:-1}"
mkdir -p "$RUN_DIR" "$EMAIL_FILE_PATH"

# Every child runs in the background in its own process group (setsid) and the script
# `wait`s: bash runs a trap only once its foreground child returns, so with a foreground
# dev server a TERM would wait for it, and the server would outlive the script. setsid also
# keeps the terminal's Ctrl-C away from the children, so shutdown order is ours. In a script
# a background child is never a group leader, so setsid execs in place and $! is the
# child's pid and process group id.
bg_pids=()
cleanup() {
    local rc=$? pid alive
    trap - EXIT INT TERM
    # Finish the shutdown even if our stdout is gone (`make run | tee log`, then Ctrl-C kills
    # tee): with no terminal, the shutdown messages go to a log file instead.
    trap '' PIPE
    if [ ! -t 1 ]; then exec >>"$RUN_DIR/shutdown.log" 2>&1; fi
    # Reap each group: TERM (Celery's warm shutdown), KILL after 10s. A group is gone when
    # `kill -0` finds none of its processes (the dev server's reloader child included).
    for pid in "${bg_pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        alive=0
        for pid in "${bg_pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for pid in "${bg_pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    bp_services_stop_started
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A step that must finish before the next, run like the other children so a TERM or Ctrl-C
# stops it at once (and the exit trap reaps it).
step() {
    local pid rc=0
    setsid "$@" </dev/null &
    pid="$!"
    bg_pids+=("$pid")
    wait "$pid" || rc=$?
    unset 'bg_pids[-1]'
    return "$rc"
}

bp_services_start
pg_log="$RUN_DIR/pg/postgres.log"
[ -f "$RUN_DIR/pg/data/PG_VERSION" ] || pg_log="$PG_TMP_BASE/pg/postgres.log"

# localstripe POSTs payment events to the portal, signed with $STRIPE_WEBHOOK_SECRET
# (a charge whose answer was lost is settled by its webhook). Registering again replaces
# the endpoint; localstripe forgets it when it restarts.
case "$STRIPE_API_BASE" in
    http://127.0.0.1:*|http://localhost:*)
        python - "$STRIPE_API_BASE/_config/webhooks/portal" <<'PY' \
            || echo "run: WARNING: could not register the webhook endpoint with localstripe" >&2
import os, sys, urllib.parse, urllib.request
body = urllib.parse.urlencode([
    ("url", os.environ["SITE_URL"] + "/webhooks/stripe/"),
    ("secret", os.environ["STRIPE_WEBHOOK_SECRET"]),
    # The events the portal acts on (billing/webhooks.py), as a Stripe endpoint would list.
    ("events[]", "payment_intent.succeeded"),
    ("events[]", "payment_intent.payment_failed"),
]).encode()
try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=body), timeout=5)
except OSError as error:
    sys.exit(f"run: {sys.argv[1]}: {error}")
PY
        ;;
esac

step python manage.py migrate --noinput
# Monthly Sync Info partitions exist before the first record arrives (then a daily job).
step python manage.py tick --job sync_info_partitions
if [ "$SEED_DEMO" != 0 ]; then
    step python manage.py seed_demo
fi

setsid python -m devkit.saml_idp_server --port "$IDP_PORT" --key-dir "$DEMO_IDP_KEY_DIR" \
    >"$RUN_DIR/idp.log" 2>&1 </dev/null &
bg_pids+=("$!")
setsid celery -A billing_portal worker -l info --concurrency 2 \
    >"$RUN_DIR/celery-worker.log" 2>&1 </dev/null &
bg_pids+=("$!")
setsid celery -A billing_portal beat -l info --schedule "$RUN_DIR/celerybeat-schedule" \
    >"$RUN_DIR/celery-beat.log" 2>&1 </dev/null &
bg_pids+=("$!")

cat <<BANNER

  Billing portal:  http://127.0.0.1:$PORT/
  Test IdP (SSO):  $DEMO_IDP_URL/  (Globex: "Sign in with SSO" as admin@globex.example)
  Logs:            $RUN_DIR/celery-worker.log
                   $RUN_DIR/celery-beat.log
                   $RUN_DIR/idp.log
                   $RUN_DIR/redis.log
                   $pg_log
  Outgoing mail:   $EMAIL_FILE_PATH/ (one file per message)
  Database:        $DATABASE_URL
  Ctrl-C (or a TERM) stops the server, Celery, the IdP and the services this run started.

BANNER

setsid python manage.py runserver "127.0.0.1:$PORT" </dev/null &
server_pid="$!"
bg_pids+=("$server_pid")
# Returns when the server exits, or at once when a trapped signal arrives.
wait "$server_pid"
