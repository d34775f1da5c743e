#!/usr/bin/env bash
# Stage A (dummy weights) or Stage B (real weights): serve MODEL, wait until it is really ready,
# send the smoke requests, and record the verdict with its evidence under RUNS_DIR.
# Usage: scripts/stage.sh a|b      (variables: see env.example)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

stage="${1:?usage: scripts/stage.sh a|b}"
# The helper stops its own server; this trap is the backstop if the helper itself is killed.
trap stop_servers_of_this_run EXIT
run_helper stage --stage "$stage"
