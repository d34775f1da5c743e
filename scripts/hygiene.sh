#!/usr/bin/env bash
# Stop the servers this toolkit started (from its state files, verified by pid start time),
# then check that PORT is free. Never kills by name: another user's server is reported, not touched.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper hygiene
