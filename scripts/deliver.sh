#!/usr/bin/env bash
# Put the e2e YAML and the tutorial (plus the nav/toctree entry) into DELIVERY_REPO and make
# exactly one signed commit holding them and the code changes already staged there.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper deliver
