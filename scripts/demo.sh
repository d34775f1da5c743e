#!/usr/bin/env bash
# The embedded default, offline: generate a tiny model and run Stage A then Stage B on the CPU
# backend. One verdict line per stage, and where the evidence is.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

export BACKEND=cpu
export MODEL="$REPO_DIR/work/models/tiny-qwen2"
export SERVED_NAME=tiny-qwen2

generate_tiny_model() {
  run_helper tiny-model --out "$MODEL" --kind dense --weights real
}

run_stage() {
  run_helper stage --stage "$1"
}

trap stop_servers_of_this_run EXIT
generate_tiny_model
status=0
run_stage a || status=$?
if [[ "$status" -eq 130 ]]; then exit "$status"; fi
run_stage b || status=$?
echo "demo: done (exit $status); evidence under $RUNS_DIR/tiny-qwen2/"
exit "$status"
