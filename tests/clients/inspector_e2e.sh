#!/usr/bin/env bash
# End-to-end check of smart-async with the MCP Inspector CLI (the pinned
# @modelcontextprotocol/inspector in tests/clients/node_modules: run `npm ci` there
# first, or use scripts/clients.sh). Needs the server binary: SMART_ASYNC_BIN, default
# target/debug/smart-async under the repository root.
#
# The server's own flags go after `--`: the Inspector has a --config option of its
# own, and without the separator it takes smart-async's --config for itself.
set -euo pipefail

CLIENTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$CLIENTS/../.." && pwd)"
BIN="${SMART_ASYNC_BIN:-target/debug/smart-async}"
case "$BIN" in /*) ;; *) BIN="$REPO/$BIN" ;; esac
CONFIG="$REPO/data/smart-async.example.toml"

[ -x "$BIN" ] || { echo "inspector_e2e: no server binary at $BIN: run cargo build" >&2; exit 1; }
[ -d "$CLIENTS/node_modules/@modelcontextprotocol/inspector" ] \
    || { echo "inspector_e2e: run 'npm ci' in $CLIENTS first" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/smart-async-inspector.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
mkdir -p "$ROOT/docs"
printf 'hello from the inspector test\n' > "$ROOT/docs/hello.txt"
printf 'second file\n' > "$ROOT/top.txt"
HELLO_SHA="$(sha256sum "$ROOT/docs/hello.txt" | cut -d' ' -f1)"

passed=0
failed=0

# inspector NAME DATA_DIR INSPECTOR_ARGS... -- SERVER_ARGS...: runs the Inspector CLI
# from tests/clients (where npx finds the pinned package) against
# `smart-async serve SERVER_ARGS`; the output lands in $WORK/NAME.out and .err.
inspector() {
    local name="$1"
    shift
    local code=0
    (cd "$CLIENTS" && npx --no-install @modelcontextprotocol/inspector --cli "$@") \
        >"$WORK/$name.out" 2>"$WORK/$name.err" || code=$?
    echo "$code" >"$WORK/$name.code"
}

# check NAME CODE WHAT PATTERN...: the run NAME exited with CODE and its stdout
# matches each extended regex PATTERN.
check() {
    local name="$1" expected="$2" what="$3"
    shift 3
    local code problem=""
    code="$(cat "$WORK/$name.code")"
    if [ "$code" != "$expected" ]; then
        problem="exit code $code, expected $expected"
    else
        for pattern in "$@"; do
            if ! grep -Eq -- "$pattern" "$WORK/$name.out"; then
                problem="output does not match /$pattern/"
                break
            fi
        done
    fi
    if [ -z "$problem" ]; then
        echo "ok: $what"
        passed=$((passed + 1))
    else
        echo "FAILED: $what: $problem"
        echo "--- stdout (head) ---"
        head -c 3000 "$WORK/$name.out"
        echo
        echo "--- stderr (tail) ---"
        tail -n 30 "$WORK/$name.err"
        failed=$((failed + 1))
    fi
}

serve=(-- "$BIN" serve --config "$CONFIG")

inspector list --method tools/list "${serve[@]}" --data-dir "$WORK/data-list" --root "$ROOT"
check list 0 "tools/list offers the built-in, command and job tools" \
    '"name": "hash_files"' '"name": "job_status"' '"name": "count_lines"' '"async_mode"'

inspector hash --method tools/call --tool-name hash_files --tool-arg path=. \
    "${serve[@]}" --data-dir "$WORK/data-hash" --root "$ROOT"
check hash 0 "tools/call hash_files path=. answers inline with a digest" \
    '"digest": "[0-9a-f]{64}"' '"files": 2' "\"sha256\": \"$HELLO_SHA\"" '"isError": false'

# The example config runs count_lines in data/.. (the repository root).
inspector count --method tools/call --tool-name count_lines --tool-arg dir=src \
    "${serve[@]}" --data-dir "$WORK/data-count" --root "$REPO"
check count 0 "tools/call count_lines dir=src (command tool from the example config)" \
    '"exit_code": 0' 'src/main\.rs' 'src/mcp/mod\.rs' '[0-9]+ total' '"isError": false'

inspector bad --method tools/call --tool-name hash_files --tool-arg path=.. \
    "${serve[@]}" --data-dir "$WORK/data-bad" --root "$ROOT"
# The Inspector CLI exits 5 (tool_is_error) when a tool answers isError: true.
check bad 5 "tools/call hash_files path=.. is an isError result" \
    'outside the allowed roots' '"isError": true'

# --- smart-async proxy: the Inspector in front of the proxy in front of a real server.
# The upstream's command comes after the proxy's own `--` (the Inspector passes the
# second `--` through to the proxy unchanged).
EVERYTHING="$CLIENTS/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
[ -f "$EVERYTHING" ] || { echo "inspector_e2e: no server-everything: run 'npm ci' in $CLIENTS" >&2; exit 1; }
proxy_everything() { # proxy_everything DATA_DIR PROXY_FLAGS...
    local data="$1"
    shift
    printf '%s\n' -- "$BIN" proxy --data-dir "$data" "$@" -- node "$EVERYTHING" stdio
}

mapfile -t cmd < <(proxy_everything "$WORK/data-proxy-list")
inspector proxy-list --method tools/list "${cmd[@]}"
check proxy-list 0 "proxy: tools/list offers server-everything's tools and the job tools" \
    '"name": "echo"' '"name": "trigger-long-running-operation"' '"name": "job_status"' \
    '"name": "predictor_stats"' '"async_mode"' '"description": "Echoes back the input string"'

mapfile -t cmd < <(proxy_everything "$WORK/data-proxy-echo")
inspector proxy-echo --method tools/call --tool-name echo --tool-arg 'message=hi from the inspector' "${cmd[@]}"
# (the upstream's result as it is: server-everything sends no isError field)
check proxy-echo 0 "proxy: tools/call echo answers inline with the upstream's text" \
    '"text": "Echo: hi from the inspector"'

# 3 s of work against a 1 s budget: promoted to a job at the deadline. The Inspector
# declares the tasks extension at initialize, so the answer is a task (CreateTaskResult);
# a client without it would get the tool-level job answer (job_id).
mapfile -t cmd < <(proxy_everything "$WORK/data-proxy-long" --budget-s 1)
inspector proxy-long --method tools/call --tool-name trigger-long-running-operation \
    --tool-arg duration=3 --tool-arg steps=3 "${cmd[@]}"
check proxy-long 0 "proxy: tools/call trigger-long-running-operation 3 s over a 1 s budget is a job" \
    '"(taskId|job_id)": "[0-9a-f-]{36}"' '"status": "(working|running)"'

# An upstream isError result stays one (the Python test server, from the venv that
# scripts/clients.sh creates).
SLOW_PY="${SLOW_SERVER_PYTHON:-$CLIENTS/.venv/bin/python}"
if [ -x "$SLOW_PY" ]; then
    inspector proxy-fail --method tools/call --tool-name fail --tool-arg 'message=kaput' \
        -- "$BIN" proxy --data-dir "$WORK/data-proxy-fail" -- "$SLOW_PY" "$CLIENTS/slow_server.py"
    check proxy-fail 5 "proxy: tools/call fail (Python upstream) is an isError result with its message" \
        'kaput' '"isError": true'
else
    echo "skipped: proxy isError case (no Python venv at $SLOW_PY: run scripts/clients.sh)"
fi

echo "inspector: $passed passed, $failed failed"
[ "$failed" = 0 ]
