#!/usr/bin/env bash
# The workflow's default set, feature-first: Stage A, one Stage B with every applicable feature on
# (each decided from its own line in that run's log), flashcomm1 beside it (at once when two NPU
# groups are free), isolation only on failure or missing evidence, then the matrix. A fresh PASS
# of the same command is reused (FORCE=1 reruns it). Exit 1 when Stage B or an applicable feature
# failed, 130 when interrupted (every run of the set stopped, each with its evidence).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# The helper stops its own servers; this trap is the backstop if the helper itself is killed.
trap stop_servers_of_this_run EXIT
run_helper all-features
