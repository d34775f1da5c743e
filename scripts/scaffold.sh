#!/usr/bin/env bash
# Write the minimal adapter of MODEL's architecture: a module reusing the vLLM class FROM (default:
# triage's nearest), the weight rename written out, and its registration, in ADAPTER_ROOT.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper scaffold
