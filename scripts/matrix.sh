#!/usr/bin/env bash
# Aggregate MODEL's latest recorded evidence into RUNS_DIR/<model>/matrix.json and matrix.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper matrix
