#!/usr/bin/env bash
# Accuracy with lm-evaluation-harness against the OpenAI-compatible server: reuses our running
# server for MODEL on PORT, or starts one with the Stage B plan (real weights) and stops it after.
# Writes RUNS_DIR/<model>/<stamp>-accuracy/accuracy.json with lm-eval's own metric names.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_lm_eval
# The helper stops a server it started; this trap is the backstop if the helper itself is killed.
trap stop_servers_of_this_run EXIT
run_helper accuracy
