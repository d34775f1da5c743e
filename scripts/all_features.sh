#!/usr/bin/env bash
# The workflow's default set in its order: Stage A, Stage B, EP, flashcomm1, MTP (multimodal and
# ACLGraph are checked inside every stage), then the matrix. Continues past failures; the exit
# code comes from the matrix: 1 when Stage B or an applicable feature failed, else 0.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

trap stop_servers_of_this_run EXIT

run_step() {
  local status=0
  echo "== $*"
  "$@" || status=$?
  # 130: the user pressed Ctrl-C; stop the whole set instead of starting the next server.
  if [[ "$status" -eq 130 ]]; then
    exit 130
  fi
}

run_step run_helper stage --stage a
run_step run_helper stage --stage b
for gate in ep flashcomm1 mtp; do
  run_step run_helper gate "$gate"
done
echo "== matrix"
run_helper matrix --exit-code
