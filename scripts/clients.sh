#!/usr/bin/env bash
# End-to-end tests with real third-party MCP clients: the official Python SDK (pytest,
# tests/clients/test_*.py: the server, the proxy, and bearer-token authentication over
# Streamable HTTP), the MCP Inspector CLI (tests/clients/inspector_e2e.sh) and the
# official TypeScript clients, the classic SDK (over stdio, and over HTTP with a bearer
# token) and the 2026-07-28 client with the tasks extension (node --test,
# tests/clients/ts_*.test.mjs). Needs Python 3.11+ with venv, Node 20+ with npm, and a
# Rust toolchain; installs the pinned client packages into tests/clients.
#
#   SMART_ASYNC_BIN   server binary to test (default target/debug/smart-async, or
#                     under $CARGO_TARGET_DIR; built with `cargo build --locked` only
#                     when missing: rebuild yourself after changing the server)
#   PYTHON            interpreter for the venv (default python3)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENTS="$REPO/tests/clients"
VENV="$CLIENTS/.venv"
PYTHON="${PYTHON:-python3}"
started=$SECONDS

# sha256 of the given files, to tell whether an install is stale.
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Python SDK: a venv with the pinned requirements, reinstalled when they change.
want="$(stamp_of "$CLIENTS/requirements.txt")"
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    echo "== pip install -r tests/clients/requirements.txt"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$CLIENTS/requirements.txt"
    echo "$want" >"$VENV/.requirements.sha256"
fi

# npm packages (Inspector, TypeScript SDKs): npm ci when node_modules is missing or
# older than the lockfile.
want="$(stamp_of "$CLIENTS/package.json" "$CLIENTS/package-lock.json")"
if [ "$(cat "$CLIENTS/node_modules/.clients-lock.sha256" 2>/dev/null)" != "$want" ]; then
    echo "== npm ci in tests/clients"
    (cd "$CLIENTS" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$CLIENTS/node_modules/.clients-lock.sha256"
fi

# The server binary.
BIN="${SMART_ASYNC_BIN:-${CARGO_TARGET_DIR:-target}/debug/smart-async}"
case "$BIN" in /*) ;; *) BIN="$REPO/$BIN" ;; esac
if [ ! -x "$BIN" ]; then
    if [ -n "${SMART_ASYNC_BIN:-}" ]; then
        echo "clients.sh: SMART_ASYNC_BIN=$SMART_ASYNC_BIN is not an executable" >&2
        exit 1
    fi
    echo "== cargo build --locked"
    (cd "$REPO" && cargo build --locked --bin smart-async)
    [ -x "$BIN" ] || { echo "clients.sh: cargo build left no binary at $BIN" >&2; exit 1; }
fi
export SMART_ASYNC_BIN="$BIN"
echo "== testing $BIN"

status=0
echo "== Python SDK (pytest tests/clients)"
(cd "$CLIENTS" && "$VENV/bin/python" -m pytest -v -p no:cacheprovider .) || status=1

echo "== MCP Inspector CLI (tests/clients/inspector_e2e.sh)"
bash "$CLIENTS/inspector_e2e.sh" || status=1

# The files run two at a time: their servers mostly sleep, not compute.
echo "== TypeScript SDK clients (node --test tests/clients/ts_*.test.mjs)"
(cd "$CLIENTS" && node --test --test-concurrency=2 ts_*.test.mjs) || status=1

echo "== clients.sh: $((SECONDS - started)) s, $([ "$status" = 0 ] && echo passed || echo FAILED)"
exit "$status"
