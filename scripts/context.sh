#!/usr/bin/env bash
# Collect the context (the workflow's first step): checkpoint, implementation roots, delivery repo,
# versions and import paths, NPU processes, port. Writes RUNS_DIR/<model>/context.json; changes nothing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper context
