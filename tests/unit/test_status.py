"""`make status`: the checklist of a model read from its evidence. The runs are real stage runs on
the replay backend (a vllm-ascend server without an NPU playing a recorded start, helpers/replay/)
against a generated tiny checkpoint; then the checkpoint, the roots or the versions change, and
status must say which run went stale and what to run next. No server is started by status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import base_env, free_port, run_cli, run_make
from helpers import tinymodel
from tests.fixtures.fake_delivery import copy_evidence
from tests.fixtures.fake_roots import git, make_roots, write


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return tinymodel.generate(tmp_path / "models" / "tiny-qwen3", weights="real")


def replay_env(runs_dir: Path, model: Path, **extra: str) -> dict[str, str]:
    return base_env(runs_dir, MODEL=str(model), BACKEND="replay", REPLAY_SCENARIO="v0.11-qwen3-8b",
                    REPLAY_SPEED="0", PORT=str(free_port()), **extra)


def status_of(env: dict[str, str]) -> dict:
    result = run_cli(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def step(record: dict, name: str) -> dict:
    return next(s for s in record["steps"] if s["step"] == name)


def test_a_stage_b_made_stale_by_a_changed_config_is_named_with_the_next_command(tmp_path, runs_dir, checkpoint):
    """The acceptance test of issue 14 (section 5)."""
    vllm, ascend = make_roots(tmp_path / "roots")
    env = replay_env(runs_dir, checkpoint, VLLM_SRC=str(vllm), VLLM_ASCEND_SRC=str(ascend))
    stage_b = run_cli(["stage", "--stage", "b"], env)
    assert stage_b.returncode == 0, stage_b.stdout + stage_b.stderr
    record = status_of(env)
    assert step(record, "stage-b")["verdict"] == "PASS" and step(record, "stage-b")["stale"] == []
    # a PASS alone does not sign off: a capacity result, or a recorded reason why not (workflow item 104)
    assert record["signoff"]["possible"] is False and "no capacity result" in record["signoff"]["reason"]
    assert run_cli(["capacity"], dict(env, CAPACITY_NOT_FEASIBLE="one replayed NPU")).returncode == 0
    record = status_of(env)
    assert record["signoff"]["possible"] is True and record["signoff"]["capacity"]["reason"] == "one replayed NPU"
    # the stage triaged in-process (for its TP plan) without asking vLLM's registry: the full triage comes next
    assert record["next"] == {"command": f"make triage MODEL={checkpoint}",
                              "why": "written in-process by a stage or gate run, without vLLM's registry"}

    config = checkpoint / "config.json"
    data = json.loads(config.read_text())
    data["rope_theta"] = 5_000_000.0
    config.write_text(json.dumps(data))
    result = run_make("status", env)  # the table, as an engineer reads it the next morning
    assert result.returncode == 0, result.stderr
    assert "STALE: config.json changed since this run" in result.stdout
    assert "sign-off: not yet: the full-layer Stage B PASS (stage-b," in result.stdout
    assert f"next: make triage MODEL={checkpoint}" in result.stdout  # the config changed: re-triage first
    record = status_of(env)
    assert step(record, "stage-b")["stale"] == ["config.json changed since this run"]
    assert step(record, "stage-b")["run_dir"].endswith("-stage-b")
    assert step(record, "stage-b")["age"].endswith(" s")
    assert record["signoff"]["possible"] is False

    assert run_cli(["triage", "--no-registry"], env).returncode == 0
    record = status_of(env)
    assert step(record, "triage")["stale"] == []
    assert record["next"]["command"] == f"make stage-b MODEL={checkpoint}"
    assert "stale: config.json changed since this run" in record["next"]["why"]
    # code changed in a root since the first run: check it before serving again
    write(vllm, "vllm/model_executor/models/qwen2.py", "class Qwen2ForCausalLM:\n    layers = 2\n")
    assert status_of(env)["next"]["command"] == f"make changes MODEL={checkpoint}"
    assert run_cli(["changes"], env).returncode == 0
    record = status_of(env)
    assert step(record, "changes")["verdict"] == "PASS"
    assert record["next"]["command"] == f"make stage-b MODEL={checkpoint}"
    assert "VLLM_SRC has other uncommitted changes than at this run" in step(record, "stage-b")["stale"]


def test_reduced_layer_passes_never_sign_off(runs_dir, checkpoint):
    env = replay_env(runs_dir, checkpoint)
    assert run_cli(["stage", "--stage", "b"], env).returncode == 0
    evidence = next((runs_dir / "tiny-qwen3").glob("*-stage-b/evidence.json"))
    data = json.loads(evidence.read_text())
    data["layers"] = {"reduced": True, "num_hidden_layers": 1}  # what a --hf-overrides run records (i14b)
    evidence.write_text(json.dumps(data))
    record = status_of(env)
    assert (record["signoff"]["possible"], record["signoff"]["run_dir"]) == (False, None)
    assert "does not count: reduced layers" in record["signoff"]["reason"]
    assert step(record, "stage-b")["note"] == "reduced layers: never signs off"


def test_root_head_and_version_changes_make_runs_stale(tmp_path, runs_dir, checkpoint):
    vllm, ascend = make_roots(tmp_path / "roots")
    env = replay_env(runs_dir, checkpoint, VLLM_SRC=str(vllm), VLLM_ASCEND_SRC=str(ascend))
    assert run_cli(["stage", "--stage", "b"], env).returncode == 0
    write(ascend, "vllm_ascend/ops/rotary_embedding.py", "def rope(x):\n    return -x\n")
    record = status_of(env)
    assert step(record, "stage-b")["stale"] == ["VLLM_ASCEND_SRC has other uncommitted changes than at this run"]
    git(ascend, "commit", "-qam", "patch")
    assert any("VLLM_ASCEND_SRC HEAD moved" in s for s in step(status_of(env), "stage-b")["stale"])
    # another recorded box: other versions than the run saw
    other = dict(env, REPLAY_SCENARIO="v0.13-qwen3-30b-a3b")
    stale = step(status_of(other), "stage-b")["stale"]
    assert any(s.startswith("vllm-ascend is now 0.13") for s in stale), stale


def test_status_of_recorded_evidence_without_a_checkpoint_here(tmp_path):
    """The fixture evidence of tests/fixtures/evidence (a CPU bring-up): every step is read."""
    runs = copy_evidence(tmp_path / "runs")
    record = status_of(base_env(runs, MODEL="tiny-qwen2"))
    verdicts = {s["step"]: s["verdict"] for s in record["steps"]}
    assert verdicts["stage-a"] == "PASS" and verdicts["stage-b"] == "PASS" and verdicts["accuracy"] == "PASS"
    assert verdicts["capacity"] == "PASS" and verdicts["deliver"] == "NOT_RUN"
    assert record["signoff"]["possible"] is True
    assert record["next"]["command"] == "make report MODEL=tiny-qwen2"
    (runs / "tiny-qwen2" / "latest-accuracy").unlink()
    assert status_of(base_env(runs, MODEL="tiny-qwen2"))["next"]["command"] == "make accuracy MODEL=tiny-qwen2"


def test_status_without_evidence_is_one_line():
    result = run_cli(["status"], base_env(Path("/nonexistent-runs"), MODEL="nothing-here"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: no evidence for 'nothing-here'") and "Traceback" not in result.stderr
