#!/usr/bin/env bash
# Read a server log (LOG) and say what failed, where, and which ladder rung to try next.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper diagnose --log "${LOG:-}"
