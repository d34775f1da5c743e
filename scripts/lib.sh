#!/usr/bin/env bash
# Shared by the step scripts: where the repo and its Python are, and how to call the helpers.
# Sourced, not run. Variables come from the environment (make exports them; see env.example).

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$REPO_DIR/$VENV" ;; esac
PY="$VENV/bin/python"

# A token that names this invocation in the tool's state files, so the EXIT trap stops only
# the server this invocation started, never a colleague's run on the same machine.
BRINGUP_RUN_TOKEN="${BRINGUP_RUN_TOKEN:-run-$$-$RANDOM}"
export BRINGUP_RUN_TOKEN

# The repo goes on the helper's own PYTHONPATH only: the helper gives the servers it starts the
# box's PYTHONPATH back unchanged (on Ascend, CANN's set_env.sh puts te/tbe/hccl there).
run_helper() {
  PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m helpers "$@"
}

stop_servers_of_this_run() {
  run_helper stop --token "$BRINGUP_RUN_TOKEN" --quiet || true
}

# pip's output goes to a log (setup-pip.log in the venv); it is shown only when pip fails.
pip_quietly() {
  local log="$VENV/setup-pip.log"
  if ! "$VENV/bin/pip" "$@" --quiet >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "setup: pip $1 failed; full log: $log" >&2
    return 1
  fi
}
