#!/usr/bin/env bash
# Runs the side-by-side protocol probes against the release build and prints
# one JSON line per probe. By hand, not in CI: figures are reported in issue
# notes, never asserted in tests.
#
#   bench/run_probes.sh [PROBE_PY]       (default: ../shared/bench/probe.py)
#   MB=64 N=200 CONNS=50 PER=20 bench/run_probes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROBE="${1:-../shared/bench/probe.py}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || { python3 -m venv .venv && .venv/bin/pip install -q -r tests/requirements.txt; }
cargo build --release --locked -q
BIN="$PWD/target/release/runtimeuse"
for probe in startup latency bigout split_secret cancel_tree double_error concurrent; do
  printf '%-13s ' "$probe"
  "$PY" "$PROBE" "$probe" -- "$BIN" --agent echo --host 127.0.0.1 --port '{port}'
done
