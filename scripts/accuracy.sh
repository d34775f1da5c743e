#!/usr/bin/env bash
# Accuracy with lm-evaluation-harness against the OpenAI-compatible server: reuses our running
# server for MODEL on PORT, or starts one with the Stage B plan (real weights) and stops it after.
# Writes RUNS_DIR/<model>/<stamp>-accuracy/accuracy.json with lm-eval's own metric names.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# The version the vllm-ascend e2e accuracy tests are pinned to (lm-eval 0.4.x).
LM_EVAL_REQUIREMENT="lm-eval[api]==0.4.13"

# Installed on first use (not by `make setup`): only the accuracy step needs it. A lock keeps two
# concurrent first runs from installing into the same venv at once. It never changes a package of
# the box (torch, transformers ... pinned): pip refuses instead, in one line.
ensure_lm_eval() {
  if "$PY" -c 'import lm_eval' >/dev/null 2>&1; then return 0; fi
  echo "accuracy: installing $LM_EVAL_REQUIREMENT into $VENV (about 35 s; log: $VENV/setup-pip.log)"
  (
    flock 9
    "$PY" -c 'import lm_eval' >/dev/null 2>&1 || pip_install_keeping_the_box "$LM_EVAL_REQUIREMENT"
  ) 9>"$VENV/.lm-eval-install.lock"
}

ensure_lm_eval
# The helper stops a server it started; this trap is the backstop if the helper itself is killed.
trap stop_servers_of_this_run EXIT
run_helper accuracy
