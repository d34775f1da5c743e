#!/usr/bin/env bash
# Generate a tiny deterministic checkpoint (no downloads) for the CPU backend and the tests.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# TINY_DIR, TINY_KIND and TINY_WEIGHTS (env.example) are read by the helper itself.
run_helper tiny-model
