"""Layer-reduced runs never sign off (issue 14 section 3).

Detection from the serve argv (--hf-overrides num_hidden_layers, nested text sections too, also
when it came in through EXTRA_ARGS) and from a trimmed checkpoint (fewer layers in the weights
than config.json declares); the record in evidence.json (stage runs against the fake launcher of
tests/fixtures/fake_server.py); and the acceptance path on recorded evidence fixtures: a
layer-reduced Stage B PASS alone is neither reported as signed off nor delivered, and adding a
full-layer PASS is, with a documented command that never carries the reduction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port_between, run_cli, run_make
from helpers import layers, tinymodel
from tests.fixtures.fake_delivery import copy_evidence, git, make_repo

OVERRIDE = '{"num_hidden_layers": 1}'


@pytest.mark.parametrize("argv, expected", [
    (["--hf-overrides", '{"num_hidden_layers": 2}'], 2),
    (['--hf-overrides={"text_config": {"num_hidden_layers": 3}}'], 3),
    (["--hf-overrides", '{"text_config.num_hidden_layers": 4}'], 4),
    (["--hf-overrides", '{"thinker_config": {"text_config": {"num_hidden_layers": 5}}}'], 5),
    (["--hf-overrides", '{"rope_scaling": {"factor": 2}}'], None),
    (["--hf-overrides", "not json"], None),
    (["--max-model-len", "4096"], None),
])
def test_the_argv_tells_a_layer_override(argv, expected):
    assert layers.from_argv(["vllm", "serve", "/models/x", *argv]) == expected


def test_an_override_reduces_only_below_the_config_and_dummy_weights_ignore_the_checkpoint():
    argv = ["--hf-overrides", '{"num_hidden_layers": 2}']
    assert layers.assess(argv, "b", 36, 36).to_dict() == {"reduced": True, "how": "hf-overrides", "config": 36,
                                                          "used": 2}
    assert not layers.assess(["--hf-overrides", '{"num_hidden_layers": 36}'], "b", 36, 36).reduced
    assert layers.assess([], "b", 36, 4).how == "trimmed-checkpoint"
    assert not layers.assess([], "a", 36, 4).reduced  # dummy weights build every layer of the config
    assert layers.assess(argv, "b", 36, 36).describe() == "hf-overrides num_hidden_layers=2 of 36"


def test_layers_in_the_weights_ignore_mtp_layers_and_other_layouts():
    names = ["model.layers.0.mlp.w", "model.layers.1.mlp.w", "model.layers.61.eh_proj.weight", "lm_head.weight"]
    assert layers.count_layers(names, 61) == 2
    assert layers.count_layers(["model.language_model.layers.0.x", "visual.blocks.0.x"], 28) == 1
    assert layers.count_layers(["transformer.h.0.attn.weight"], 28) is None  # unknown layout: no claim


def test_a_trimmed_checkpoint_is_counted_from_its_headers_and_recorded_by_triage(tmp_path):
    model = tinymodel.generate(tmp_path / "tiny", shards=2)  # 2 layers in the weights
    assert layers.weight_layer_count(model, 2) == 2
    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] = 4
    (model / "config.json").write_text(json.dumps(config))
    assert layers.weight_layer_count(model, 4) == 2
    env = base_env(tmp_path / "runs", MODEL=str(model))
    result = run_cli(["triage", "--no-registry", "--json"], env, timeout=120)
    record = json.loads(result.stdout)
    assert record["layers"] == {"config": 4, "weights": 2, "trimmed": True}
    assert any("trimmed checkpoint" in w for w in record["warnings"])
    assert record["hf_id"] is None and record["hf_id_source"] == "none"


def fake_env(tmp_path: Path, model: Path, **extra: str) -> dict[str, str]:
    return base_env(tmp_path / "runs", BRINGUP_PROFILE_DIR=str(REPO / "tests/fixtures/profiles"), BACKEND="fake",
                    MODEL=str(model), PORT=str(free_port_between(18500, 18559)), READY_TIMEOUT="60",
                    STALL_TIMEOUT="30", REQUEST_TIMEOUT="30", **extra)


def test_stage_runs_record_the_layers_they_used(tmp_path, runs_dir):
    """EXTRA_ARGS with --hf-overrides on Stage A, a trimmed checkpoint on Stage B (fake launcher)."""
    model = tinymodel.generate(tmp_path / "tiny-trim")
    env = fake_env(tmp_path, model, RUNS_DIR=str(runs_dir), EXTRA_ARGS=f"--hf-overrides '{OVERRIDE}'")
    result = run_cli(["stage", "--stage", "a"], env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "reduced-layers (hf-overrides num_hidden_layers=1 of 2)" in result.stdout
    record = json.loads((runs_dir / "tiny-trim/latest-stage-a/evidence.json").read_text())
    assert record["layers"] == {"reduced": True, "how": "hf-overrides", "config": 2, "used": 1}
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=3)))
    env["EXTRA_ARGS"] = ""
    assert run_cli(["stage", "--stage", "b"], env, timeout=120).returncode == 0
    record = json.loads((runs_dir / "tiny-trim/latest-stage-b/evidence.json").read_text())
    assert record["layers"] == {"reduced": True, "how": "trimmed-checkpoint", "config": 3, "used": 2}


# --- acceptance on recorded evidence --------------------------------------------------------------
def reduce_layers(run_dir: Path) -> None:
    """Turn a recorded full-layer run into the same run with --hf-overrides num_hidden_layers=1."""
    evidence = run_dir / "evidence.json"
    data = json.loads(evidence.read_text())
    data["command"]["argv"] += ["--hf-overrides", OVERRIDE]
    data["layers"] = {"reduced": True, "how": "hf-overrides", "config": 2, "used": 1}
    evidence.write_text(json.dumps(data))
    command = run_dir / "command.sh"
    command.write_text(command.read_text().rstrip("\n") + f" \\\n  --hf-overrides '{OVERRIDE}'\n")


def add_full_layer_pass(model_dir: Path, source: str, stamp: str) -> Path:
    """A newer full-layer Stage B PASS (a copy of a recorded one, as the fixture was made)."""
    target = model_dir / f"{stamp}-stage-b"
    shutil.copytree(REPO / "tests/fixtures/evidence/tiny-qwen2" / source, target)
    data = json.loads((target / "evidence.json").read_text())
    data["started_at"] = data["finished_at"] = "2026-11-21T21:50:00+00:00"
    (target / "evidence.json").write_text(json.dumps(data))
    return target


def test_a_layer_reduced_stage_b_pass_alone_cannot_be_delivered_and_a_full_layer_pass_can(tmp_path):
    runs = copy_evidence(tmp_path / "runs", "tiny-qwen2")
    model_dir = runs / "tiny-qwen2"
    for name in ("20261121T213000Z-stage-b", "20261121T212500Z-eager"):  # every Stage B PASS, reduced
        reduce_layers(model_dir / name)
    repo = make_repo(tmp_path, "mkdocs")
    env = base_env(runs, MODEL="tiny-qwen2", DELIVERY_REPO=str(repo), GIT_CONFIG_GLOBAL="/dev/null",
                   GIT_CONFIG_NOSYSTEM="1")

    report = run_cli(["report"], env, timeout=60)
    assert report.returncode == 1
    line = report.stderr.strip()
    assert "\n" not in line and line.startswith("error: sign-off refused for tiny-qwen2: no full-layer Stage B PASS")
    assert "does not count: reduced layers (hf-overrides num_hidden_layers=1 of 2" in line
    assert "20261121T213000Z-stage-b" in line
    text = (model_dir / "deliverables/report.zh.md").read_text()
    assert "没有通过的全层 Stage B" in text.splitlines()[2] and "`reduced-layers`（减层：`--hf-overrides`，1/2 层）" in text
    matrix = json.loads((model_dir / "matrix.json").read_text())
    assert matrix["stages"]["stage-b"]["layers"]["reduced"] is True and matrix["sign_off"]["ok"] is False
    matrix_md = (model_dir / "matrix.md").read_text()
    assert "PASS (reduced-layers: hf-overrides, 1 of 2 layers)" in matrix_md  # the Stage B row
    assert "| eager | PASS (reduced-layers) |" in matrix_md  # and every other run's row
    assert "| eager 回退 | 通过，`reduced-layers`" in text
    assert OVERRIDE not in (model_dir / "deliverables/runbook.zh.md").read_text()  # no command carries it

    head = git(repo, "rev-parse", "HEAD").stdout
    refused = run_cli(["deliver"], env, timeout=60)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [line]
    assert git(repo, "rev-parse", "HEAD").stdout == head and git(repo, "status", "--porcelain").stdout == ""

    full = add_full_layer_pass(model_dir, "20261121T213000Z-stage-b", "20261121T215000Z")
    result = run_make("deliver", env)
    assert result.returncode == 0, result.stderr
    assert len(git(repo, "rev-list", "main..HEAD").stdout.split()) == 1
    runbook = (model_dir / "deliverables/runbook.zh.md").read_text()
    assert f"`{full}/command.sh`" in runbook and OVERRIDE not in runbook
    tutorial = (repo / "docs/source/tutorials/models/tiny-qwen2.md").read_text()
    assert OVERRIDE not in tutorial and "--hf-overrides" not in tutorial
    assert run_cli(["report"], env, timeout=60).returncode == 0
