#!/usr/bin/env bash
# Reset both implementation roots to HEAD, only with CONFIRM=yes; each root's diff and untracked
# files are saved under RUNS_DIR/implementation-roots/<stamp>-reset-roots/ first, so nothing is lost.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper reset-roots
