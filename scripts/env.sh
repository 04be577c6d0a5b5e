# shellcheck shell=bash
# Shared environment for the dev/test scripts. Source it, don't run it:
#     source scripts/env.sh
# Anything the caller already exported wins; we only fill in defaults, so a
# developer can e.g. `PG_PORT=55433 make test` to run next to another checkout.

# Checkout root, resolved from this file's location (physical path, no symlinks).
# Always recomputed: it is a fact about this checkout, not a setting.
PROJECT_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
export PROJECT_ROOT

# Per-checkout runtime state: logs, pid files, the Postgres cluster, dev mail.
export RUN_DIR="${RUN_DIR:-$PROJECT_ROOT/.run}"

# Ports of the project-local services (non-default, so a system Postgres or
# Redis on 5432/6379 is never touched).
export PG_PORT="${PG_PORT:-55432}"
export REDIS_PORT="${REDIS_PORT:-56379}"

export DATABASE_URL="${DATABASE_URL:-postgres://portal@127.0.0.1:${PG_PORT}/billing_portal}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT}/0}"

# localstripe, the Stripe stand-in services.sh runs; the settings read STRIPE_API_BASE.
export STRIPE_PORT="${STRIPE_PORT:-58420}"
export STRIPE_API_BASE="${STRIPE_API_BASE:-http://127.0.0.1:${STRIPE_PORT}}"
# Secret localstripe signs webhooks with (run.sh registers the endpoint with it); the
# settings verify the Stripe-Signature header with the same value.
export STRIPE_WEBHOOK_SECRET="${STRIPE_WEBHOOK_SECRET:-whsec_localstripe}"

# Postgres server binaries (initdb, pg_ctl) are not on PATH on Debian.
if [ -z "${PG_BIN:-}" ]; then
    if [ -x /usr/lib/postgresql/15/bin/pg_ctl ]; then
        PG_BIN=/usr/lib/postgresql/15/bin
    else
        # Fall back to the newest installed major version (glob order; all are >= 10).
        PG_BIN=""
        for _pg_dir in /usr/lib/postgresql/*/bin; do
            if [ -x "$_pg_dir/pg_ctl" ]; then PG_BIN="$_pg_dir"; fi
        done
        unset _pg_dir
    fi
fi
export PG_BIN

# Where the cluster lives when the `postgres` user cannot reach <checkout>/.run
# (e.g. the checkout is under /root). Keyed by checkout path so two checkouts
# never share a cluster. Not overridable on its own: set TMPDIR instead.
PG_TMP_BASE="${TMPDIR:-/tmp}/billing-portal-$(printf '%s' "$PROJECT_ROOT" | sha1sum | cut -c1-12)"
export PG_TMP_BASE

# Dev e-mail is written to files here instead of sent (billing_portal/settings.py reads it).
export EMAIL_FILE_PATH="${EMAIL_FILE_PATH:-$RUN_DIR/mail}"

# Playwright must use Debian's Chromium: its own browser download is not allowed.
if [ -z "${CHROMIUM_PATH:-}" ]; then
    CHROMIUM_PATH="$(command -v chromium || command -v chromium-browser || true)"
fi
export CHROMIUM_PATH

# The project's virtualenv goes first on PATH (unless it already is first).
case ":${PATH}:" in
    ":$PROJECT_ROOT/.venv/bin:"*) ;;
    *) export PATH="$PROJECT_ROOT/.venv/bin:${PATH}" ;;
esac

# Helpers for run.sh/test.sh: start services and remember which ones *this*
# caller started, so its exit trap stops only those (never a Postgres/Redis
# that another terminal or run started and still uses).
BP_STARTED_SERVICES="${BP_STARTED_SERVICES:-}"
BP_SERVICES_PENDING="${BP_SERVICES_PENDING:-0}"
bp_services_start() {
    local rc=0
    BP_SERVICES_PENDING=1
    bash "$PROJECT_ROOT/scripts/services.sh" start || rc=$?
    BP_STARTED_SERVICES="$(cat "$RUN_DIR/started-services" 2>/dev/null || true)"
    BP_SERVICES_PENDING=0
    return "$rc"
}
bp_services_stop_started() {
    # Interrupted half-way through start: the file is all we have.
    if [ "$BP_SERVICES_PENDING" = 1 ]; then
        BP_STARTED_SERVICES="$(cat "$RUN_DIR/started-services" 2>/dev/null || true)"
        BP_SERVICES_PENDING=0
    fi
    if [ -n "$BP_STARTED_SERVICES" ]; then
        # shellcheck disable=SC2086  # word-split the list on purpose
        bash "$PROJECT_ROOT/scripts/services.sh" stop $BP_STARTED_SERVICES || true
        BP_STARTED_SERVICES=""
    fi
}
