#!/usr/bin/env bash
# API fuzzing of `truce serve` against its own OpenAPI document (/openapi.json)
# with Schemathesis: no request may get a 5xx, and every answer must have a
# status and a body that the document declares.
#
# Usage (from anywhere; paths are relative to the repository root):
#   bash scripts/schemathesis.sh
# Environment:
#   SCHEMATHESIS_MAX_TIME  fuzzing budget in seconds (default 100)
#   SCHEMATHESIS_SEED      fixed seed to replay a run (default: random, printed)
#
# Schemathesis is installed from PyPI at a pinned version into a venv under
# target/, so a fresh machine with Python 3 + pip needs nothing else. The server
# runs on a free loopback port with a temporary data directory and is stopped by
# its PID when the script exits, however it exits. The exit status is
# Schemathesis' own.
set -euo pipefail

# Known good with the document utoipa 5 writes (OpenAPI 3.1); bump deliberately.
SCHEMATHESIS_VERSION="4.32.5"
MAX_TIME="${SCHEMATHESIS_MAX_TIME:-100}"
# Each request is bounded, so a stuck route shows up as a failure, not a hang.
REQUEST_TIMEOUT=10
# not_a_server_error: no 5xx. status_code_conformance: only documented statuses.
# response_schema_conformance: bodies match the documented schemas.
CHECKS="not_a_server_error,status_code_conformance,response_schema_conformance"
# One worker: on Python 3.11, hypothesis' lambda descriptions call ast.parse from
# several threads, which is not thread-safe there and crashes the run at random
# ("AST constructor recursion depth mismatch"); the server is not the problem.
# The RxDB replication routes are left to the interop tests, which drive them
# with RxDB's own code: the stream never ends (a fuzzer would only time out),
# and generating push rows (arrays of free-form documents) crashes the fuzzer's
# example generator (a hypothesis SystemError on Python 3.11), not the server.
# A backup writes a directory wherever its body says, on this machine: a
# fuzzer's absolute paths ("/0") would write backups into the root directory
# (tests/api.rs and tests/auth.rs drive it instead).
EXCLUDE_PATHS='^/v1/c/\{coll\}/_(pull|push)|^/v1/_backup$'

cd "$(dirname "$0")/.."
started=$SECONDS

target_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
venv="$target_dir/schemathesis-venv"
report_dir="$target_dir/schemathesis-report"

installed_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true
}

if [[ "$(installed_version)" != "$SCHEMATHESIS_VERSION" ]]; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || {
        echo "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 2
    }
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

echo "== building truce-server"
cargo build -q -p truce-server
truce="$target_dir/debug/truce"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
data="$(mktemp -d "${TMPDIR:-/tmp}/truce-schemathesis.XXXXXX")"
server_log="$data.log"
server_pid=""
fuzzer_pid=""

# Ends what this script started, by PID: the fuzzer (if interrupted), then the server.
stop_all() {
    if [[ -n "$fuzzer_pid" ]] && kill -0 "$fuzzer_pid" 2>/dev/null; then
        kill -TERM "$fuzzer_pid" 2>/dev/null || true
        wait "$fuzzer_pid" 2>/dev/null || true
    fi
    fuzzer_pid=""
    stop_server
}

stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        # A graceful stop finishes in-flight requests; give it 10 s, then SIGKILL.
        for _ in $(seq 1 100); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
    rm -rf "$data" "$server_log"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

echo "== starting $truce serve on 127.0.0.1:$port (data $data)"
TRUCE_LOG=warn "$truce" serve --listen "127.0.0.1:$port" --data "$data/db" 2>"$server_log" &
server_pid=$!

base="http://127.0.0.1:$port"
ready=""
for _ in $(seq 1 200); do
    if python3 -c "import urllib.request, sys; urllib.request.urlopen('$base/healthz', timeout=1)" 2>/dev/null; then
        ready=1
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if [[ -z "$ready" ]]; then
    echo "truce serve did not become healthy on $base:" >&2
    cat "$server_log" >&2
    exit 2
fi

seed_args=()
if [[ -n "${SCHEMATHESIS_SEED:-}" ]]; then
    seed_args=(--seed "$SCHEMATHESIS_SEED")
fi

echo "== schemathesis $SCHEMATHESIS_VERSION: checks $CHECKS, at most ${MAX_TIME}s"
fuzz_started=$SECONDS
# In the background and waited for, so that a signal to this script runs the
# EXIT trap at once instead of after the fuzzer's whole budget.
NO_COLOR=1 "$venv/bin/schemathesis" run "$base/openapi.json" \
    --checks "$CHECKS" \
    --exclude-path-regex "$EXCLUDE_PATHS" \
    --max-time "$MAX_TIME" \
    --request-timeout "$REQUEST_TIMEOUT" \
    --workers 1 \
    --report junit --report-dir "$report_dir" \
    ${seed_args[@]+"${seed_args[@]}"} </dev/null &
fuzzer_pid=$!
status=0
wait "$fuzzer_pid" || status=$?
fuzzer_pid=""
fuzz_seconds=$((SECONDS - fuzz_started))

# The server logs every 5xx at WARN: list them too, whatever Schemathesis made of them.
server_errors="$(grep -c -E ' (WARN|ERROR) ' "$server_log" || true)"
echo
echo "== summary"
echo "   schemathesis exit status: $status ($([[ $status -eq 0 ]] && echo PASS || echo FAIL))"
echo "   fuzzing time: ${fuzz_seconds}s, whole script: $((SECONDS - started))s"
echo "   server warnings/errors logged: $server_errors"
if [[ "$server_errors" != "0" ]]; then
    grep -E ' (WARN|ERROR) ' "$server_log" | head -20 | sed 's/^/   | /'
fi
echo "   JUnit report: $report_dir"
exit "$status"
