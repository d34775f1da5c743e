"""A new architecture end to end on the real vLLM CPU server, through make, as a user would.

A tiny "new" architecture is generated locally (own model_type and architecture name, weight
names renamed from Qwen2's layout, remote code importing a transformers symbol the installed
version lacks). A stand-in vllm-ascend root (tests/fixtures/ascend_standin.py) is installed the
way vllm-ascend registers its models, as a `vllm.general_plugins` entry point, by putting the
root on PYTHONPATH: no venv is changed, and deleting the temporary directory uninstalls it.
Then: triage names the nearest architecture, the rename and the missing symbol; scaffold writes
the adapter into the stand-in root; keymap is clean, and names the keys when a rename is taken
out (Stage B then refuses to start, naming them); Stage A and Stage B PASS on the server running
that adapter; changes, accuracy, report and deliver make one commit holding the adapter, its
registration, the YAML and the tutorial."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port, latest_run, run_make
from helpers.adapt import newarch
from helpers.serve import recorded_servers

sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from ascend_standin import git, make_standin  # noqa: E402

TINY_TASK = REPO / "tests/fixtures/lm_eval_tiny"
ADAPTER = "vllm_ascend/models/tinynew.py"
REGISTRATION = "vllm_ascend/models/__init__.py"


def check(result, *needles: str, code: int = 0) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == code, out[-4000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-4000:]}"
    return out


@pytest.mark.slow(seconds=210)
def test_a_new_architecture_from_triage_to_the_one_commit(runs_dir, tmp_path):
    checkpoint = newarch.generate(tmp_path / "tiny-new")
    root = make_standin(tmp_path / "vllm-ascend")
    env = base_env(runs_dir, MODEL=str(checkpoint), PORT=str(free_port()), VLLM_ASCEND_SRC=str(root),
                   VLLM_SRC=str(tmp_path / "no-vllm-root"), PYTHONPATH=f"{REPO}:{root}",
                   HF_MODULES_CACHE=str(tmp_path / "hf-modules"), HF_HUB_OFFLINE="1",
                   GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")
    serve_env = dict(env, EXTRA_ARGS="--trust-remote-code")

    out = check(run_make("triage", env), "nearest #1: Qwen2ForCausalLM",
                "vllm/model_executor/models/qwen2.py: class Qwen2ForCausalLM",
                "rename: transformer -> model, attention -> self_attn, feed_forward -> mlp, "
                "tok_embeddings -> embed_tokens",
                "modeling_tinynew.py:3 imports transformers.cache_utils.HybridCache", "never upgrade transformers")
    next_commands = out.split("下一步 next:")[1].split()
    assert next_commands[:2] == ["make", "scaffold"] and "FROM=Qwen2ForCausalLM" in next_commands

    # before any adapter: the nearest registered class's own load_weights names what it would not take
    check(run_make("keymap", env), "keymap: faults", "nearest registered class Qwen2ForCausalLM",
          "transformer.layers.0.attention.q_proj.weight: ValueError: There is no module or parameter named "
          "'transformer'", code=2)

    check(run_make("scaffold", env), f"created {root / ADAPTER}", f"changed {root / REGISTRATION}")

    check(run_make("keymap", env), "keymap: clean", "vllm_ascend.models.tinynew.TinyNewForCausalLM")
    adapter = root / ADAPTER
    scaffolded = adapter.read_text()
    adapter.write_text(scaffolded.replace('    "feed_forward": "mlp",\n', ""))
    try:
        out = check(run_make("keymap", env), "keymap: faults", "transformer.layers.0.feed_forward.down_proj.weight",
                    "model.layers.0.mlp.gate_up_proj.weight", code=2)
        assert "starting cpu server" not in out and list(recorded_servers(runs_dir)) == []
        # the dry run `make keymap` just made on these very roots answers for Stage B
        out = check(run_make("stage-b", serve_env), "keymap: reused", "Stage B refused: the adapter's load_weights "
                    "cannot load", "transformer.layers.0.feed_forward", "KEYMAP_CHECK=off", code=2)
        assert "starting cpu server" not in out and not list(runs_dir.glob("tiny-new/*-stage-b"))
    finally:
        adapter.write_text(scaffolded)

    check(run_make("stage-a", serve_env), "PASS stage-a tiny-new")
    # the adapter is back as scaffolded: the clean keymap made on it then still holds
    check(run_make("stage-b", serve_env), "keymap: reused", "keymap: clean", "PASS stage-b tiny-new")
    record = json.loads((latest_run(runs_dir, "tiny-new", "stage-b") / "evidence.json").read_text())
    assert record["log_evidence"]["architecture"] == "TinyNewForCausalLM"
    assert all(r["ok"] and r["content"].strip() for r in record["requests"])

    check(run_make("changes", env))
    changes = json.loads((runs_dir / "tiny-new/changes.json").read_text())
    kinds = {f["path"]: f["kind"] for f in changes["files"]}
    assert kinds == {ADAPTER: "model-adapter", REGISTRATION: "registry"}

    check(run_make("accuracy", dict(serve_env, TASKS="tiny_gsm8k", NUM_FEWSHOT="2", DATASET_DIR=str(TINY_TASK)),
                   timeout=1200))
    # sign-off needs a capacity result or the reason why not: this test's subject is the adaptation
    check(run_make("capacity", env, "CAPACITY_NOT_FEASIBLE=a tiny generated architecture on the CPU backend"))
    check(run_make("report", env))
    out = check(run_make("deliver", dict(env, DELIVERY_REPO=str(root))))
    ahead = git(root, "rev-list", "main..HEAD").split()
    assert len(ahead) == 1 and ahead[0] in out
    files = set(git(root, "show", "--name-only", "--format=", "HEAD").split())
    assert {ADAPTER, REGISTRATION, "tests/e2e/models/configs/tiny-new.yaml",
            "docs/source/tutorials/models/tiny-new.md"} <= files
    assert git(root, "status", "--porcelain") == ""
    assert list(recorded_servers(runs_dir)) == []


@pytest.mark.parametrize("qk_norm, arch", [(False, "Qwen2ForCausalLM"), (True, "Qwen3ForCausalLM")])
def test_the_candidate_weight_lists_are_what_vllm_loads(tmp_path, qk_norm, arch):
    """architectures.yaml's names for a candidate are exactly what vLLM's own class loads cleanly
    (its load_weights over the header-only tensors of a checkpoint in that layout). It imports vLLM
    but starts no server: it runs with the fast tests, not in a server lane."""
    from helpers import tinymodel
    from helpers.adapt import keymap, nearest

    directory = tinymodel.generate(tmp_path / arch, spec=tinymodel.TinySpec(qk_norm=qk_norm))
    config = json.loads((directory / "config.json").read_text())
    result = keymap.check(directory, config)
    assert result.verdict == "clean" and result.model_class.endswith(f".{arch}"), keymap.summary(result)
    candidate = next(c for c in nearest.load_candidates() if c.arch == arch)
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        names = {nearest.fold(name) for name in handle.keys()}
    assert names == set(candidate.weights)
