#!/usr/bin/env bash
# Render the deliverables from recorded evidence (triage.json, evidence.json, matrix.json,
# capacity.json, accuracy.json): nothing is re-typed, every claim names its log.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper report
