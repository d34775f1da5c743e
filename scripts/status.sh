#!/usr/bin/env bash
# Where am I: the checklist of MODEL read from its recorded evidence (JSON=1: the record). Starts nothing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper status
