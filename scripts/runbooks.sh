#!/usr/bin/env bash
# Regenerate the generated part of runbooks/ (the failure-signature quick reference) from
# helpers/signatures.yaml, so the Chinese runbook and the log scanner never disagree.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper signatures-doc
