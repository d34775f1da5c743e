#!/usr/bin/env bash
# Triage the checkpoint MODEL: print the table (TRIAGE_JSON=1: the record), write
# RUNS_DIR/<model>/triage.json for later steps.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper triage
