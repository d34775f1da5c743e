#!/usr/bin/env bash
# Exactly one signed commit in DELIVERY_REPO: the model's vllm-ascend code listed in changes.json
# (in place, or backported), the e2e YAML, the tutorial and its nav/toctree entry; the vLLM
# root's changes exported as deliverables/vllm-changes.patch.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper deliver
