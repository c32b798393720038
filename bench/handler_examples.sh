#!/usr/bin/env bash
# The warm echo round trip and the one-shot client.query time through each
# handler example (one per SDK, the raw-protocol sh one, a Node-runtime
# module), next to the bundled --agent echo, with the same probes for all.
# By hand, not in CI: figures go in notes, never in tests.
#
#   bench/handler_examples.sh [PROBE_PY]    (default: ../shared/bench/probe.py)
#   N=200 bench/handler_examples.sh         (N: requests per probe)
#
# latency: one connection, N invocations on the warm handler (median, p95).
# oneshot: a new connection per query, as client.query() does; every one
# starts its own handler process, so this is mostly the handler's start-up.
set -euo pipefail
cd "$(dirname "$0")/.."
PROBE="${1:-../shared/bench/probe.py}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || { python3 -m venv .venv && .venv/bin/pip install -q -r tests/requirements.txt; }
cargo build --release --locked -q
BIN="$PWD/target/release/runtimeuse"
for handler in "--agent echo" \
  "--handler handlers/examples/echo.py" \
  "--handler handlers/examples/echo.mjs" \
  "--handler handlers/examples/echo_go.sh" \
  "--handler handlers/examples/echo.sh" \
  "--handler tests/e2e/handlers/node_runtime_echo.mjs"; do
  for probe in latency oneshot; do
    # shellcheck disable=SC2086 # $handler is two words on purpose
    printf '%-52s %-8s %s\n' "$handler" "$probe" \
      "$("$PY" "$PROBE" "$probe" -- "$BIN" --host 127.0.0.1 --port '{port}' $handler)"
  done
done
