#!/usr/bin/env bash
# Install what the project needs on this machine: Debian packages and the .venv.
# Idempotent, and takes well under a second when nothing changed, so run.sh and
# test.sh call it every time (a fresh CI machine has none of this).
set -euo pipefail

# Debian packages. "a|b" means either one counts as installed (a gets installed).
# Append here when the project needs more.
APT_PACKAGES="postgresql-15|postgresql redis-server chromium fonts-dejavu-core libpango-1.0-0 libpangoft2-1.0-0 faketime"

# The interpreter .venv is built from, and the minor version pyproject requires.
PYTHON="${PYTHON:-python3}"
REQUIRED_PY="3.11"

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd -P)"
VENV="$ROOT/.venv"
STAMP="$VENV/.deps-stamp"

log() { echo "bootstrap: $*"; }
die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }

# Two callers at once (run.sh + test.sh) must not run apt/pip concurrently.
mkdir -p "$ROOT/.run"
exec 9>>"$ROOT/.run/bootstrap.lock"
flock -w 600 9 || die "timed out waiting for .run/bootstrap.lock"

# ------------------------------------------------------------------ apt --

pkg_installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'; }

missing=()
if command -v dpkg >/dev/null; then
    for spec in $APT_PACKAGES; do
        IFS='|' read -r -a alternatives <<<"$spec"
        found=0
        for pkg in "${alternatives[@]}"; do
            if pkg_installed "$pkg"; then found=1; break; fi
        done
        [ "$found" = 1 ] || missing+=("${alternatives[0]}")
    done
    # Debian's own python3 needs python3-venv for `-m venv` (pyenv's doesn't).
    if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
        missing+=(python3-venv)
    fi
else
    log "warning: no dpkg (not Debian?); install these yourself: $APT_PACKAGES"
fi

if [ "${#missing[@]}" -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    log "installing missing apt packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --------------------------------------------------------------- python --

# (Re)create the venv if it is missing or its interpreter no longer runs.
if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
    have_py="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [ "$have_py" = "$REQUIRED_PY" ] \
        || die "$PYTHON is Python $have_py, the project needs $REQUIRED_PY (set PYTHON=...)"
    log "creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi

# pip runs only when pyproject.toml or requirements.lock changed since the last
# successful install (the stamp holds their combined sha256).
want="$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    req="$(mktemp)"
    trap 'rm -f "$req"' EXIT
    # Direct deps (runtime + dev extra) from pyproject; the lock pins everything else.
    "$VENV/bin/python" - "$req" <<'PY'
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
deps = project.get("dependencies", []) + project.get("optional-dependencies", {}).get("dev", [])
with open(sys.argv[1], "w") as out:
    out.write("\n".join(deps) + "\n")
PY
    log "installing Python dependencies into .venv"
    pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
    "${pip[@]}" install -q --upgrade pip
    "${pip[@]}" install -q --progress-bar off -r "$req" -c requirements.lock
    # NB: no `playwright install`: tests drive Debian's /usr/bin/chromium.
    # axe-core comes inside axe-playwright-python's wheel; the accessibility check never fetches it.
    "$VENV/bin/python" -c 'import axe_playwright_python, pathlib; assert (pathlib.Path(axe_playwright_python.__file__).parent / "axe.min.js").is_file()' \
        || die "axe-playwright-python has no bundled axe.min.js"
    # lxml and xmlsec must be built against one libxml2, or SAML fails at import.
    "$VENV/bin/python" -c 'import lxml.etree, xmlsec' || die "lxml and xmlsec do not load together"
    echo "$want" >"$STAMP"
else
    log "apt packages present, Python deps up to date"
fi
