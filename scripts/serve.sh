#!/usr/bin/env bash
# Start the documented command (Stage B, served like the documented run, capacity's baseline size)
# and leave it running: capacity's baseline cell and accuracy use it when their command is the
# same, and a person can curl it. No EXIT trap here: stopping it is `make hygiene`'s job.
# Usage: scripts/serve.sh      (variables: see env.example)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_helper serve
