#!/usr/bin/env bash
# Benchmarks (not tests): each prints its timings; none starts a server.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

for bench in "$REPO_DIR"/tests/bench/bench_*.py; do
  echo "bench: ${bench#"$REPO_DIR"/}"
  "$PY" "$bench"
done
