"""`make report` from recorded evidence fixtures (tests/fixtures/evidence, built from the strings
of real runs): golden renders, every section present, every log path real, the e2e YAML valid and
round-tripping, Stage B absence said first, and each input missing rendered as "not run"."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, base_env, run_cli, run_make
from helpers import e2e, render_inputs
from tests.fixtures.fake_delivery import copy_evidence, make_repo, normalise

GOLDEN = REPO / "tests" / "fixtures" / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

REPORT_SECTIONS = ["## 1. 模型架构", "## 2. 根因与改动", "## 3. 证据（含日志路径）", "## 4. 特性矩阵（四类）",
                   "## 5. 最大长度：理论最大长度与实际最大长度", "## 6. dummy 与真实权重对比", "## 7. 假就绪（false-ready）案例",
                   "## 8. 回退阶梯：已尝试的级", "## 9. 精度", "## 10. 已知限制"]
# The workflow's template (workflow-checklist.txt "Tutorial doc generation"), in this order.
TUTORIAL_SECTIONS = ["## Introduction", "## Supported Features", "## Environment Preparation", "## Deployment",
                     "## Functional Verification", "## Accuracy Evaluation", "## Performance"]


@pytest.fixture
def runs(tmp_path):
    return copy_evidence(tmp_path / "runs")


def report(runs: Path, model: str, tmp_path: Path, *, signs_off: bool = True, **extra: str):
    """`helpers report`: exit 0 when the evidence signs off, else exit 1 with one line (the
    documents are written either way)."""
    if model == "tiny-vl" and signs_off:  # it passed Stage B only with TORCHDYNAMO_DISABLE: accepted here
        extra.setdefault("ACCEPT_FALLBACK", "dynamo")
    env = base_env(runs, MODEL=model, **extra)
    result = run_cli(["report"], env, timeout=60)
    assert result.returncode == (0 if signs_off else 1), result.stderr
    if not signs_off:
        assert result.stderr.count("\n") == 1 and "sign-off refused" in result.stderr, result.stderr
    return runs / model / "deliverables", result


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"golden {path} missing (UPDATE_GOLDEN=1 writes it)"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden render"


@pytest.mark.parametrize("model", ["tiny-qwen2", "tiny-dummy-only", "tiny-vl"])
def test_golden_renders_with_every_section_and_real_log_paths(runs, tmp_path, model):
    out, _ = report(runs, model, tmp_path, signs_off=model != "tiny-dummy-only")
    text = (out / "report.zh.md").read_text(encoding="utf-8")
    for section in REPORT_SECTIONS:
        assert section in text, section
    paths = re.findall(r"`([^`\s]+\.log)`", text)
    assert paths, "the report names no log"
    for path in paths:
        assert Path(path).is_file(), f"report cites a log that does not exist: {path}"
    for name in ("report.zh.md", "runbook.zh.md", "issue-comment.zh.md"):
        check_golden(f"{model}/{name}", normalise((out / name).read_text(encoding="utf-8"), runs))


def test_report_cites_every_recorded_run_and_the_false_ready_root_cause(runs, tmp_path):
    out, _ = report(runs, "tiny-qwen2", tmp_path)
    text = (out / "report.zh.md").read_text(encoding="utf-8")
    for run_dir in (runs / "tiny-qwen2").glob("2026*"):
        assert str(run_dir) in text
    assert "RuntimeError: shape '[1, 17, 2, 64]' is invalid for input of size 1088" in text
    assert "| tiny_gsm8k | 2 | 4 | `exact_match,strict-match` | 0.25 |" in text
    assert "| 理论最大长度（max_position_embeddings） | 32768 |" in text
    assert text.index("## 1.") < text.index("RuntimeError")


def test_missing_stage_b_is_said_in_the_first_lines(runs, tmp_path):
    out, result = report(runs, "tiny-dummy-only", tmp_path, signs_off=False)
    first = "\n".join((out / "report.zh.md").read_text(encoding="utf-8").splitlines()[:4])
    assert "没有通过的全层 Stage B（真实权重）证据" in first and "不能验收" in first
    assert "report: NOT signed off" in result.stdout
    assert "Stage B never ran" in result.stderr
    runbook = (out / "runbook.zh.md").read_text(encoding="utf-8")
    assert "没有通过的全层 Stage B" in runbook.splitlines()[2]
    assert not (out / "tests").exists(), "no e2e YAML without a passing accuracy run"


def test_failed_stage_b_only_also_refuses_sign_off(runs, tmp_path):
    """A Stage B that ran but failed (the dummy-pass/real-fail pair without the fix) never signs off."""
    model_dir = runs / "tiny-qwen2"
    for name in ("20261121T213000Z-stage-b", "20261121T212500Z-eager"):
        evidence = model_dir / name / "evidence.json"
        data = json.loads(evidence.read_text())
        data["verdict"] = "FAIL"
        evidence.write_text(json.dumps(data))
    out, _ = report(runs, "tiny-qwen2", tmp_path, signs_off=False)
    first = (out / "report.zh.md").read_text(encoding="utf-8").splitlines()[2]
    assert "没有通过的全层 Stage B" in first and "失败" in first


def test_absent_inputs_render_as_not_run(runs, tmp_path):
    for name in ("triage.json", "capacity.json"):
        (runs / "tiny-qwen2" / name).unlink()
    (runs / "tiny-qwen2" / "latest-accuracy").unlink()
    # without capacity.json (and no recorded reason why not) the evidence does not sign off
    out, result = report(runs, "tiny-qwen2", tmp_path, signs_off=False)
    assert "no capacity result" in result.stderr
    text = (out / "report.zh.md").read_text(encoding="utf-8")
    assert "triage.json 未运行" in text
    assert "capacity.json 未运行" in text
    assert "accuracy.json 未运行" in text
    # the matrix is rebuilt from evidence.json by `make report` itself: stages, false-ready, gates
    assert "矩阵来源：matrix.json（`make report` 由记录的证据重建）" in text
    assert "RuntimeError: shape" in text and "| eager 回退 | 通过 |" in text
    assert "e2e config: not written" in result.stdout


def test_runbook_commands_are_the_recorded_ones(runs, tmp_path):
    out, _ = report(runs, "tiny-qwen2", tmp_path)
    runbook = (out / "runbook.zh.md").read_text(encoding="utf-8")
    recorded = (runs / "tiny-qwen2/20261121T213000Z-stage-b/command.sh").read_text().splitlines()
    body = [line for line in recorded if not line.startswith("#") and line != "set -euo pipefail"]
    expected = "\n".join(line[5:] if line.startswith("exec ") else line for line in body)
    assert expected in runbook, "primary command is not command.sh of the latest passing Stage B"
    eager = (runs / "tiny-qwen2/20261121T212500Z-eager/command.sh").read_text()
    assert "--enforce-eager" in eager and "已验证：取自" in runbook
    assert "http://127.0.0.1:18399/health" in runbook  # the port the run used
    assert '"say hi"' in runbook


def test_only_fallback_passing_is_the_documented_mode_and_flagged(runs, tmp_path):
    repo = make_repo(tmp_path, "myst")
    out, result = report(runs, "tiny-vl", tmp_path, signs_off=False, DELIVERY_REPO=str(repo))
    assert "ACCEPT_FALLBACK=dynamo" in result.stderr  # the refusal names the variable that accepts it
    out, _ = report(runs, "tiny-vl", tmp_path, DELIVERY_REPO=str(repo), ACCEPT_FALLBACK="dynamo")
    runbook = (out / "runbook.zh.md").read_text(encoding="utf-8")
    assert "只有回退模式 TORCHDYNAMO_DISABLE=1 通过" in runbook
    assert "export TORCHDYNAMO_DISABLE=1" in runbook.split("## 2.")[0]
    assert "image_url" in runbook  # VL smoke request
    tutorial = (out / "docs/source/tutorials/models/tiny-vl.md").read_text(encoding="utf-8")
    assert "Only `TORCHDYNAMO_DISABLE=1` passed validation" in tutorial


def test_e2e_yaml_round_trips_and_validates(runs, tmp_path):
    for model, expected_type in (("tiny-qwen2", None), ("tiny-vl", "vllm-vlm")):
        out, _ = report(runs, model, tmp_path)
        text = (out / f"tests/e2e/models/configs/{model}.yaml").read_text()
        data = yaml.safe_load(text)
        assert e2e.validate_e2e_config(data) == []
        assert data.get("model_type") == expected_type
        accuracy = json.loads((runs / model / "latest-accuracy/accuracy.json").read_text())
        assert {m["name"]: m["value"] for m in data["tasks"][0]["metrics"]} == accuracy["tasks"][0]["metrics"]
        check_golden(f"{model}/{model}.yaml", text)
    vl = yaml.safe_load((runs / "tiny-vl/deliverables/tests/e2e/models/configs/tiny-vl.yaml").read_text())
    assert vl["model_name"] == "Qwen/Qwen2.5-VL-7B-Instruct" and vl["hardware"] == "Atlas A2 Series"
    assert vl["serve"]["tensor_parallel_size"] == 8


@pytest.mark.parametrize("broken, problem", [
    ({"tasks": []}, "missing required key 'model_name'"),
    ({"model_name": "x", "tasks": [{"name": "gsm8k", "metrics": [{"name": "acc", "value": "high"}]}]}, "numeric value"),
    ({"model_name": "x", "tasks": [{"name": "t", "metrics": [{"name": "a", "value": 1}]}], "model_type": "hf"}, "not one of"),
    ({"model_name": "x", "tasks": [{"name": "t", "metrics": [{"name": "a", "value": 1}]}], "serve": {"tp": 8}}, "serve.tp"),
    ({"model_name": "x", "tasks": [{"name": "t", "metrics": [{"name": "a", "value": 1}]}], "tolerance": 0.1}, "unknown key"),
])
def test_schema_rejects_bad_configs(broken, problem):
    assert any(problem in p for p in e2e.validate_e2e_config(broken)), e2e.validate_e2e_config(broken)


@pytest.mark.parametrize("kind, model", [("mkdocs", "tiny-qwen2"), ("myst", "tiny-vl")])
def test_tutorial_in_the_delivery_repo_docs_syntax(runs, tmp_path, kind, model):
    repo = make_repo(tmp_path, kind)
    out, _ = report(runs, model, tmp_path, DELIVERY_REPO=str(repo))
    text = (out / f"docs/source/tutorials/models/{model}.md").read_text(encoding="utf-8")
    for section in TUTORIAL_SECTIONS:
        assert section in text, section
    assert not re.search(r"[\u4e00-\u9fff]", text), "the tutorial must be English only"
    if kind == "mkdocs":
        assert '=== "A3 series"' in text and '=== "A2 series"' in text
        assert "    export IMAGE=quay.io/ascend/vllm-ascend:{{ vllm_ascend_version }}-a3" in text
        assert "!!! note" in text and "{tab-set}" not in text and "|vllm_ascend_version|" not in text
    else:
        assert ":::::{tab-set}" in text and "::::{tab-item} A3 series\n:sync: A3" in text
        assert "export IMAGE=quay.io/ascend/vllm-ascend:|vllm_ascend_version|-a3" in text
        assert ":::{note}" in text and "=== " not in text and "{{ vllm_ascend_version }}" not in text
    check_golden(f"{model}/tutorial.{kind}.md", normalise(text, runs))


def test_report_refuses_a_delivery_repo_of_unknown_docs_system(runs, tmp_path):
    repo = make_repo(tmp_path, "none")
    env = base_env(runs, MODEL="tiny-qwen2", DELIVERY_REPO=str(repo))
    result = run_cli(["report"], env, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "cannot tell its docs system" in result.stderr


def test_make_report_without_evidence_is_one_line_exit_2(tmp_path):
    env = base_env(tmp_path / "runs", MODEL="never-run")
    result = run_make("report", env)
    assert result.returncode == 2
    assert "no evidence for 'never-run'" in result.stderr and "Traceback" not in result.stderr


def test_adapters_read_both_triage_shapes(runs):
    nested = render_inputs.adapt_triage(runs / "tiny-qwen2")
    flat = render_inputs.adapt_triage(runs / "tiny-vl")
    assert nested["architectures"] == ["Qwen2ForCausalLM"] and nested["multimodal"] is False
    assert nested["features"]["mtp"]["category"] == "checkpoint-missing"
    assert flat["multimodal"] is True and flat["series"] == "A2" and flat["tp"] == 8
    assert flat["features"]["multimodal"]["category"] == "supported"
    assert render_inputs.adapt_triage(runs / "nothing")["present"] is False


def test_hf_id_comes_from_model_id_else_the_checkpoints_own_metadata(tmp_path):
    from helpers import hf_id

    plain = tmp_path / "Qwen3-8B"
    plain.mkdir()
    assert hf_id.find(plain, {}, "Org/Given") == ("Org/Given", "MODEL_ID")
    assert hf_id.find(plain, {"_name_or_path": "Qwen/Qwen3-8B"}) == ("Qwen/Qwen3-8B", "config.json:_name_or_path")
    assert hf_id.find(plain, {"_name_or_path": "/root/ckpt/qwen"}) == (None, "none")  # a local path is no id
    cached = tmp_path / "hub/models--Qwen--Qwen3-8B/snapshots/abc123"
    cached.mkdir(parents=True)
    assert hf_id.find(cached, {}) == ("Qwen/Qwen3-8B", "hub-cache:models--Qwen--Qwen3-8B")
    (plain / "README.md").write_text("---\nbase_model: Qwen/Qwen3-8B-Base\nlicense_link: "
                                     "https://huggingface.co/Qwen/Qwen3-8B/blob/main/LICENSE\n---\n# Qwen3-8B\n")
    assert hf_id.find(plain, {}) == ("Qwen/Qwen3-8B", "README.md:license_link")  # never base_model: the parent


def test_the_e2e_yaml_always_names_the_hardware_and_the_report_says_where_the_id_came_from(runs, tmp_path):
    out, _ = report(runs, "tiny-qwen2", tmp_path, MODEL_ID="Org/tiny-qwen2")
    config = yaml.safe_load((out / "tests/e2e/models/configs/tiny-qwen2.yaml").read_text())
    assert config["model_name"] == "Org/tiny-qwen2" and config["hardware"] == "Atlas A2 Series"
    text = (out / "report.zh.md").read_text(encoding="utf-8")
    assert "模型 id：`Org/tiny-qwen2`（来源：`MODEL_ID` 变量）" in text and "按 `tp=1` 推定" in text
