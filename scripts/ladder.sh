#!/usr/bin/env bash
# The fallback ladder on MODEL: reproduce, --enforce-eager, TORCHDYNAMO_DISABLE=1, text-only;
# each rung a normal stage run with its own evidence; stops at the first rung that passes.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

trap stop_servers_of_this_run EXIT
run_helper ladder
