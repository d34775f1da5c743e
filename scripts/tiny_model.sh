#!/usr/bin/env bash
# Generate a tiny deterministic checkpoint (no downloads) for the CPU backend and the tests.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

args=(tiny-model --out "$TINY_DIR" --kind "$TINY_KIND" --weights "$TINY_WEIGHTS")
run_helper "${args[@]}"
