#!/usr/bin/env bash
# Capacity: one server start and one concurrent load per max-num-seqs cell (SWEEP) at the tested
# max-model-len; finds the practical max length from vLLM's estimate; resumable.
# Usage: scripts/capacity.sh      (variables: see env.example)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# The helper stops each cell's server; this trap is the backstop if the helper itself is killed.
trap stop_servers_of_this_run EXIT
run_helper capacity
