#!/usr/bin/env bash
# The full check, as CI runs it: deps, services, pytest, migrations, lint.
# Extra arguments go to pytest:  scripts/test.sh -k invoices -x
set -euo pipefail
SECONDS=0

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh

# Playwright's sync API keeps an event loop running in the test thread, which
# makes Django refuse ORM calls there unless this is set.
export DJANGO_ALLOW_ASYNC_UNSAFE=true

finish() {
    local rc=$?
    trap - EXIT INT TERM
    bp_services_stop_started   # only what this run started; a dev's running services stay up
    echo "test.sh: total wall time ${SECONDS}s (exit code $rc)"
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bp_services_start

echo "test.sh: pytest $*"
rc=0
pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: ERROR: pytest collected no tests (exit code 5); a run without tests is a failure" >&2
    exit 5
elif [ "$rc" -ne 0 ]; then
    echo "test.sh: ERROR: pytest failed (exit code $rc)" >&2
    exit "$rc"
fi

echo "test.sh: checking for missing migrations"
DJANGO_SETTINGS_MODULE=billing_portal.test_settings python manage.py makemigrations --check --dry-run \
    || { echo "test.sh: ERROR: model changes without migrations (run makemigrations)" >&2; exit 1; }

echo "test.sh: ruff"
ruff check . || { echo "test.sh: ERROR: ruff check failed (try: make format)" >&2; exit 1; }
ruff format --check . || { echo "test.sh: ERROR: code not formatted (run: make format)" >&2; exit 1; }

echo "test.sh: import contracts (docs/architecture.md)"
lint-imports --no-cache || { echo "test.sh: ERROR: an import breaks a layer contract (pyproject.toml [tool.importlinter])" >&2; exit 1; }

echo "test.sh: all checks passed"
