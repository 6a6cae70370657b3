#!/usr/bin/env bash
# Runs the Python compatibility suite (tests/compat) against a real Ferrocore server, using
# Google's own client libraries (google-cloud-iot REST transport, google-api-python-client,
# google-cloud-pubsub), and Google's Node Pub/Sub client (@google-cloud/pubsub, in
# tests/compat/node) through tests/compat/test_pubsub_node.py.
#
#   scripts/compat-tests.sh [extra pytest arguments...]
#
# Environment:
#   FERROCORE_BIN   server binary to test; when unset, `cargo build -p ferrocore` is run and
#                   the debug binary is used.
#   PYTHON          interpreter used to create the venv (default: python3.11, else python3 >= 3.10).
#   CI              when "true", a missing Python toolchain is an error instead of a skip; so is a
#                   missing node/npm for the Node tests (checked by test_pubsub_node.py).
#
# The venv lives in $ROOT/.venv-compat and is reused; packages are reinstalled only when
# tests/compat/requirements.txt (or the interpreter) changes. Likewise the Node tests run `npm ci`
# into tests/compat/node/node_modules (git-ignored) only when package-lock.json or the Node version
# changes; a CI cache should keep both directories. Neither needs a network beyond PyPI and npm.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-compat"
REQUIREMENTS="$ROOT/tests/compat/requirements.txt"
STAMP="$VENV/.requirements.sha256"

# Outside CI a machine without Python just skips this suite; in CI that must not pass silently.
cannot_run() {
    if [[ "${CI:-}" == "true" ]]; then
        echo "error: Python compatibility tests cannot run under CI: $1" >&2
        exit 1
    fi
    echo "skipping Python compatibility tests: $1" >&2
    exit 0
}

python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

PY="$(find_python)" || cannot_run "no python3.11 (or python3 >= 3.10) found on PATH"

# A venv whose interpreter no longer runs (Python upgraded or removed) is rebuilt from scratch.
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "compat-tests: $VENV is broken; recreating it" >&2
    rm -rf "$VENV"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "compat-tests: creating $VENV with $PY" >&2
    if ! "$PY" -m venv "$VENV"; then
        rm -rf "$VENV"
        cannot_run "'$PY -m venv' failed (is the venv/ensurepip module installed?)"
    fi
fi

"$VENV/bin/python" -m pip --version >/dev/null 2>&1 || cannot_run "pip is not available in $VENV"

# The stamp covers the requirements and the interpreter version, so either change reinstalls.
want_stamp="$(
    {
        cat "$REQUIREMENTS"
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
)"
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want_stamp" != "$have_stamp" ]]; then
    echo "compat-tests: installing pinned packages from tests/compat/requirements.txt" >&2
    rm -f "$STAMP"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQUIREMENTS"; then
        cannot_run "pip install -r tests/compat/requirements.txt failed"
    fi
    echo "$want_stamp" >"$STAMP"
fi

if [[ -n "${FERROCORE_BIN:-}" ]]; then
    if [[ ! -x "$FERROCORE_BIN" ]]; then
        echo "error: FERROCORE_BIN=$FERROCORE_BIN is not an executable file" >&2
        exit 1
    fi
else
    echo "compat-tests: building the server (cargo build -p ferrocore)" >&2
    (cd "$ROOT" && cargo build -p ferrocore)
    # Where cargo put it: CARGO_TARGET_DIR or a .cargo/config.toml may move the target directory.
    FERROCORE_BIN="$(bash "$ROOT/scripts/cargo-target-dir.sh")/debug/ferrocore"
fi
export FERROCORE_BIN

cd "$ROOT"
# No bytecode or pytest cache files in the work tree.
export PYTHONDONTWRITEBYTECODE=1
# pytest's exit status becomes this script's exit status.
exec "$VENV/bin/python" -m pytest tests/compat -q "$@"
