#!/usr/bin/env bash
# The test suite: unit tests (fast, fixtures and small local servers) and integration tests that
# start the real vLLM CPU server (marked slow). Extra pytest arguments pass through (PYTEST_ARGS).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cd "$REPO_DIR"
read -r -a extra <<<"${PYTEST_ARGS:-}"
status=0
"$PY" -m pytest -ra --durations=15 "${extra[@]}" || status=$?
# pytest exit 5 means "no tests collected": a broken selection, not a pass.
exit "$status"
