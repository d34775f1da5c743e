#!/usr/bin/env bash
# Triage the checkpoint MODEL: print the table, write RUNS_DIR/<model>/triage.json for later steps.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

args=(triage)
# TRIAGE_JSON=1 prints the record instead of the table (for CI and scripts).
if [[ "${TRIAGE_JSON:-}" == 1 ]]; then
  args+=(--json)
fi
run_helper "${args[@]}"
