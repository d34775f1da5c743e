"""The documented command is the validated feature-first one (issue 14 section 4): among the
passing full-layer Stage B runs the one with the most features on (graph + EP + MTP where they
passed), newest on a tie; fallbacks only when nothing else passed; reduced-layer runs never.
Capacity and accuracy serve like it by default (SERVE_AS=documented) and name the run they
served like. Capacity and accuracy run the real CLI against tests/fixtures/fake_server.py (the
`fake` profile); the recorded runs they follow are written here as evidence.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port_between, run_cli
from helpers import runs as recorded
from helpers.evidence import atomic_write_json

PROFILES = REPO / "tests/fixtures/profiles"
EP = ["--enable-expert-parallel"]
MTP = ["--speculative-config", '{"method":"mtp","num_speculative_tokens":1}']


def record(model_dir: Path, stamp: str, step: str, *, flags: list[str] | None = None, verdict: str = "PASS",
           graph: str = "PASS", env: dict[str, str] | None = None, reduced: bool = False) -> Path:
    """One recorded Stage B run of `step` with the variant flags/env it served with."""
    flags = flags or []
    argv = ["vllm", "serve", "/models/m", "--port", "8000", *flags]
    if reduced:
        argv += ["--hf-overrides", '{"num_hidden_layers": 1}']
    run_dir = model_dir / f"{stamp}-{step}"
    atomic_write_json(run_dir / "evidence.json", {
        "step": step, "stage": "b", "verdict": verdict, "started_at": f"2026-11-21T{stamp[9:11]}:{stamp[11:13]}:00+00:00",
        "variant": {"name": step if flags or env else "base", "flags": flags, "env": env or {}},
        "command": {"argv": argv, "env": env or {}}, "graph": {"status": graph}})
    return run_dir


def primary(model_dir: Path) -> str | None:
    run = recorded.passing_modes(recorded.read_runs(model_dir)).primary
    return run.step if run else None


def test_the_run_with_the_most_features_on_is_documented_not_the_plain_stage_b(tmp_path):
    model_dir = tmp_path / "m"
    record(model_dir, "20261121T100000Z", "ep", flags=EP)
    record(model_dir, "20261121T110000Z", "stage-b")  # newer, but graph only
    assert primary(model_dir) == "ep"
    record(model_dir, "20261121T120000Z", "mtp", flags=MTP)  # as many features as ep, newer: a tie
    assert primary(model_dir) == "mtp"
    record(model_dir, "20261121T130000Z", "ep-mtp", flags=EP + MTP, verdict="FAIL")
    assert primary(model_dir) == "mtp", "a failed run is never documented"
    record(model_dir, "20261121T140000Z", "ep-mtp", flags=EP + MTP, reduced=True)
    assert primary(model_dir) == "mtp", "a layer-reduced run is never documented"
    run = next(r for r in recorded.read_runs(model_dir) if r.step == "mtp")
    assert run.features_on == ("aclgraph", "mtp")


def test_a_fallback_is_documented_only_when_nothing_else_passed(tmp_path):
    model_dir = tmp_path / "m"
    record(model_dir, "20261121T100000Z", "eager", flags=["--enforce-eager"], graph="NOT_APPLICABLE")
    modes = recorded.passing_modes(recorded.read_runs(model_dir))
    assert modes.primary.step == "eager" and modes.primary_is_fallback
    record(model_dir, "20261121T090000Z", "stage-b", graph="FAIL")
    assert primary(model_dir) == "stage-b"


@pytest.fixture
def fake_model(tmp_path):
    model = tmp_path / "models" / "tiny-fake"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                                   "max_position_embeddings": 4096}))
    return model


def fake_env(runs_dir: Path, model: Path, **extra: str) -> dict[str, str]:
    return base_env(runs_dir, BRINGUP_PROFILE_DIR=str(PROFILES), BACKEND="fake", MODEL=str(model),
                    PORT=str(free_port_between(18560, 18619)), READY_TIMEOUT="60", **extra)


@pytest.mark.parametrize("serve_as", ["documented", "base"])
def test_capacity_serves_like_the_documented_run_and_says_so(runs_dir, fake_model, serve_as):
    documented = record(runs_dir / "tiny-fake", "20261121T100000Z", "ep", flags=EP)
    record(runs_dir / "tiny-fake", "20261121T110000Z", "stage-b")
    env = fake_env(runs_dir, fake_model, SWEEP="2", MAX_MODEL_LEN="1024", SERVE_AS=serve_as)
    result = run_cli(["capacity"], env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((runs_dir / "tiny-fake/capacity.json").read_text())
    cell = json.loads((Path(doc["cells"][0]["run_dir"]) / "evidence.json").read_text())
    if serve_as == "documented":
        assert doc["serve_from"]["run_dir"] == str(documented) and doc["serve_from"]["flags"] == EP
        assert "--enable-expert-parallel" in cell["command"]["argv"]
        assert f"serving like the documented run {documented}" in result.stdout
    else:
        assert doc["serve_from"] is None and "--enable-expert-parallel" not in cell["command"]["argv"]


def test_accuracy_starts_its_server_like_the_documented_run(runs_dir, fake_model):
    documented = record(runs_dir / "tiny-fake", "20261121T100000Z", "ep", flags=EP)
    env = fake_env(runs_dir, fake_model, TASKS="tiny_gsm8k", NUM_FEWSHOT="0",
                   DATASET_DIR=str(REPO / "tests/fixtures/lm_eval_tiny"))
    result = run_cli(["accuracy"], env, timeout=300)
    run_dir = (runs_dir / "tiny-fake/latest-accuracy").resolve()
    data = json.loads((run_dir / "accuracy.json").read_text())
    assert data["serve_from"]["run_dir"] == str(documented), result.stdout + result.stderr
    assert "--enable-expert-parallel" in (run_dir / "command.sh").read_text()
    assert data["serve"].get("enable_expert_parallel") is True
