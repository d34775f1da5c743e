#!/usr/bin/env bash
# The key-mapping dry run: the registered adapter's load_weights over tensors built from the
# safetensors headers (no data read, no server); RUNS_DIR/<model>/<stamp>-keymap/keymap.json.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper keymap
