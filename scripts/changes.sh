#!/usr/bin/env bash
# The model's code changes in the implementation roots (VLLM_SRC, VLLM_ASCEND_SRC): classified,
# compiled, the architecture's registration read from the source -> RUNS_DIR/<model>/changes.json.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper changes
