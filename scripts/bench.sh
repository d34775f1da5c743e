#!/usr/bin/env bash
# Benchmarks (not tests): each prints its timings; bench_keymap starts one Stage B (CPU server)
# to time the fault the key-mapping dry run finds, and stops it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

for bench in "$REPO_DIR"/tests/bench/bench_*.py; do
  echo "bench: ${bench#"$REPO_DIR"/}"
  "$PY" "$bench"
done
