#!/usr/bin/env bash
# Run the whole app locally: Postgres, Redis, migrations, demo data, Celery
# worker + beat in the background, Django's dev server in the foreground.
# Ctrl-C stops everything this script started (and only that).
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh

# Dev defaults; the settings read these from the environment.
export DEBUG="${DEBUG:-1}"
export SITE_URL="${SITE_URL:-http://127.0.0.1:8000}"
mkdir -p "$RUN_DIR" "$EMAIL_FILE_PATH"

bg_pids=()
cleanup() {
    local rc=$? pid alive
    trap - EXIT INT TERM
    # Finish the shutdown even if our stdout is gone (`make run | tee log`, then Ctrl-C kills
    # tee): with no terminal, the shutdown messages go to a log file instead.
    trap '' PIPE
    if [ ! -t 1 ]; then exec >>"$RUN_DIR/shutdown.log" 2>&1; fi
    # Celery runs in its own process group (setsid), so a group kill also
    # reaches the worker's pool processes. TERM = warm shutdown; KILL after 10s.
    for pid in "${bg_pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        alive=0
        for pid in "${bg_pids[@]}"; do [ -d "/proc/$pid" ] && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for pid in "${bg_pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    bp_services_stop_started
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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
    ("url", "http://127.0.0.1:8000/webhooks/stripe/"),
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

python manage.py migrate --noinput
# Monthly Sync Info partitions exist before the first record arrives (then a daily job).
python manage.py tick --job sync_info_partitions
python manage.py seed_demo

# setsid: own process group (killable as a whole) and deaf to the terminal's Ctrl-C,
# so shutdown order is ours. In a script a background child is never a group
# leader, so setsid execs in place and $! is celery's pid and group id.
setsid celery -A billing_portal worker -l info --concurrency 2 \
    >"$RUN_DIR/celery-worker.log" 2>&1 </dev/null &
bg_pids+=("$!")
setsid celery -A billing_portal beat -l info --schedule "$RUN_DIR/celerybeat-schedule" \
    >"$RUN_DIR/celery-beat.log" 2>&1 </dev/null &
bg_pids+=("$!")

cat <<BANNER

  Billing portal:  http://127.0.0.1:8000/
  Logs:            $RUN_DIR/celery-worker.log
                   $RUN_DIR/celery-beat.log
                   $RUN_DIR/redis.log
                   $pg_log
  Outgoing mail:   $EMAIL_FILE_PATH/ (one file per message)
  Database:        $DATABASE_URL
  Ctrl-C stops the server, Celery and the services this run started.

BANNER

python manage.py runserver 127.0.0.1:8000
