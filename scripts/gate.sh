#!/usr/bin/env bash
# One feature gate on MODEL (ep, flashcomm1, mtp, xlite, eager, dynamo-fallback, text-only): decided from
# triage; a gate that does not apply records its verdict without starting a server.
# Usage: scripts/gate.sh <gate>      (variables: see env.example; STAGE=a for dummy weights)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

gate="${1:?usage: scripts/gate.sh ep|flashcomm1|mtp|xlite|eager|dynamo-fallback|text-only}"
# The helper stops its own server; this trap is the backstop if the helper itself is killed.
trap stop_servers_of_this_run EXIT
run_helper gate "$gate"
