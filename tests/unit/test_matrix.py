"""`make matrix` from recorded evidence: the evidence dirs are written by the real stage runner and
gates against the fake launcher (a dummy-pass / real-fail pair among them, since a real server
cannot be made to pass Stage A and fail Stage B on demand here); the ACLGraph rules are checked on
Ascend-shaped records carrying the real `Replaying aclgraph` line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port_between, run_cli
from helpers import matrix, tinymodel

SCHEMA_ROW = {"status", "category4", "evidence_line", "log", "line_no", "run_dir", "stage", "reason", "layers", "decided_by"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One MoE model's evidence: stage-a PASS, stage-b false-ready FAIL, ep FAIL (no EP line),
    flashcomm1 FRAMEWORK_UNSUPPORTED, mtp NOT_APPLICABLE, eager PASS, a ladder; dynamo never run."""
    root = tmp_path_factory.mktemp("matrix")
    runs = root / "runs"
    model = tinymodel.generate(root / "tiny-moe", weights="dummy", spec=tinymodel.TinySpec(kind="moe"))
    env = base_env(runs, BRINGUP_PROFILE_DIR=str(REPO / "tests/fixtures/profiles"), BACKEND="fake",
                   MODEL=str(model), PORT=str(free_port_between(18440, 18499)), READY_TIMEOUT="60", STALL_TIMEOUT="30",
                   REQUEST_TIMEOUT="30")
    steps = [(["stage", "--stage", "a"], {}), (["stage", "--stage", "b"], {"FAKE_MODE": "false-ready"}),
             (["gate", "ep"], {}), (["gate", "flashcomm1"], {}), (["gate", "mtp"], {}), (["gate", "eager"], {}),
             (["ladder"], {"FAKE_MODE": "needs-eager"})]
    for args, extra in steps:
        run_cli(args, {**env, **extra}, timeout=120)
    return runs, env


def test_matrix_json_follows_the_schema_and_the_recorded_evidence(recorded):
    runs, env = recorded
    result = run_cli(["matrix", "--exit-code"], env)
    assert result.returncode == 1, "Stage B failed: all-features must fail"
    data = json.loads((runs / "tiny-moe" / "matrix.json").read_text())
    assert set(data) == {"model", "generated_at", "backend", "stages", "features", "dummy_vs_real",
                         "false_ready", "ladder", "capacity", "sign_off"}
    assert data["model"] == "tiny-moe" and data["backend"] == "fake"
    assert list(data["features"]) == ["aclgraph", "ep", "flashcomm1", "mtp", "multimodal", "eager",
                                      "dynamo-fallback", "text-only"]
    for row in [*data["features"].values(), *data["stages"].values()]:
        assert set(row) == SCHEMA_ROW
    for row in data["stages"].values():  # rows of a run say whether it used every layer
        assert row["layers"]["reduced"] is False
    f = data["features"]
    assert (f["ep"]["status"], f["ep"]["category4"]) == ("FAIL", "failed")
    assert "ep is not proven" in f["ep"]["reason"] and f["ep"]["log"].endswith("serve.log")
    assert (f["flashcomm1"]["status"], f["flashcomm1"]["category4"]) == ("FRAMEWORK_UNSUPPORTED", "framework-unsupported")
    assert f["flashcomm1"]["log"] is None, "no server was started"
    assert (f["mtp"]["status"], f["mtp"]["category4"]) == ("NOT_APPLICABLE", "not-applicable")
    assert f["eager"]["status"] == "PASS" and "Cudagraph is disabled under eager mode" in f["eager"]["evidence_line"]
    assert (f["dynamo-fallback"]["status"], f["dynamo-fallback"]["category4"]) == ("NOT_RUN", "not-run")
    assert f["text-only"]["status"] == "NOT_RUN"
    assert f["multimodal"]["status"] == "NOT_APPLICABLE"
    assert f["aclgraph"]["status"] == "NOT_APPLICABLE"  # the fake profile expects no graphs
    assert data["stages"]["stage-a"]["status"] == "PASS" and data["stages"]["stage-b"]["status"] == "FAIL"
    assert data["stages"]["stage-b"]["stage"] == "b"

    pair = {row["check"]: row for row in data["dummy_vs_real"]}
    assert (pair["startup"]["stage_a"], pair["startup"]["stage_b"]) == ("PASS", "PASS")
    assert (pair["text"]["stage_a"], pair["text"]["stage_b"]) == ("PASS", "FAIL")
    assert pair["text"]["note"].startswith("disagree: dummy weights passed, real weights failed")
    assert pair["image"]["stage_a"] == pair["image"]["stage_b"] == "NOT_APPLICABLE"

    assert len(data["false_ready"]) == 1
    case = data["false_ready"][0]
    assert case["step"] == "stage-b" and "fake kernel failure for head size 48" in case["root_cause"]
    assert isinstance(case["line_no"], int) and Path(case["run_dir"]).is_dir()

    assert [(r["rung"], r["verdict"]) for r in data["ladder"]][:4] == [("reproduce", "FAIL"), ("xlite", "SKIPPED"),
                                                                       ("graph-keeping", "SKIPPED"), ("eager", "PASS")]
    assert all(set(r) == {"rung", "verdict", "run_dir", "category"} for r in data["ladder"])

    md = (runs / "tiny-moe" / "matrix.md").read_text()
    assert "| ep | FAIL | failed |" in md and "| dynamo-fallback | NOT_RUN | not-run |" in md
    assert "| text | PASS | FAIL | disagree" in md
    assert "fake kernel failure" in md and "| reproduce | FAIL |" in md


def _ascend(step: str, finished: str, graph: dict | None, argv_extra: list[str] | None = None, **extra) -> dict:
    return {"step": step, "stage": "b", "backend": "ascend", "verdict": "PASS", "multimodal": False,
            "finished_at": finished, "run_dir": f"/runs/m/{finished}-{step}", "log": "serve.log",
            "command": {"argv": ["vllm", "serve", "/models/m", *(argv_extra or [])]}, "graph": graph,
            "readiness": {"state": "ready", "ready_line": 40},
            "requests": [{"kind": "text", "ok": True, "status": 200}], **extra}


def write(model_runs: Path, record: dict) -> None:
    run_dir = model_runs / Path(record["run_dir"]).name
    run_dir.mkdir(parents=True)
    record["run_dir"] = str(run_dir)
    (run_dir / "evidence.json").write_text(json.dumps(record))
    link = model_runs / f"latest-{record['step']}"
    link.unlink(missing_ok=True)
    link.symlink_to(run_dir.name)


def test_aclgraph_row_comes_from_the_latest_non_eager_stage(tmp_path):
    runs = tmp_path / "m"
    replay = "(Worker_TP0 pid=3301) INFO 08-14 10:11:12 [acl_graph.py:200] Replaying aclgraph"
    write(runs, _ascend("stage-b", "2026-08-14T10:00:00+00:00", {"name": "ACLGraph", "status": "PASS", "line": replay}))
    write(runs, _ascend("eager", "2026-08-14T11:00:00+00:00",
                        {"name": "ACLGraph", "status": "NOT_APPLICABLE", "reason": "--enforce-eager"},
                        ["--enforce-eager"], feature_evidence={"line": "Enforce eager set", "line_no": 9}))
    data = matrix.build_matrix(runs, "m")
    row = data["features"]["aclgraph"]
    assert row["status"] == "PASS" and row["evidence_line"] == replay and row["run_dir"].endswith("stage-b")
    assert data["backend"] == "ascend"
    # A later non-eager run without the replay line is a FAIL of ACLGraph, not of its stage.
    write(runs, _ascend("ep", "2026-08-14T12:00:00+00:00",
                        {"name": "ACLGraph", "status": "FAIL", "reason": "no 'Replaying aclgraph' line after the first request"},
                        ["--enable-expert-parallel"], feature_evidence={"line": "EP rank 0", "line_no": 3}))
    data = matrix.build_matrix(runs, "m")
    assert data["features"]["aclgraph"]["status"] == "FAIL" and data["features"]["ep"]["status"] == "PASS"
    assert data["stages"]["stage-b"]["status"] == "PASS"
    assert matrix.exit_code(data) == 1
    graph_pair = next(r for r in data["dummy_vs_real"] if r["check"] == "graph")
    assert (graph_pair["stage_a"], graph_pair["stage_b"]) == ("NOT_RUN", "PASS")
    assert graph_pair["note"] == "only Stage B proved it"


def test_nothing_recorded_is_not_run_everywhere(tmp_path):
    data = matrix.build_matrix(tmp_path / "none", "none")
    assert data["stages"] == {"stage-a": None, "stage-b": None}
    assert {row["status"] for row in data["features"].values()} == {"NOT_RUN"}
    assert matrix.exit_code(data) == 1
    assert "| aclgraph | NOT_RUN | not-run |" in matrix.render_markdown(data)
    assert data["capacity"] is None and "No capacity run recorded" in matrix.render_markdown(data)


def test_capacity_answer_is_carried_into_the_matrix(tmp_path):
    runs = tmp_path / "m"
    runs.mkdir()
    (runs / "capacity.json").write_text(json.dumps({
        "headline": "serves 2 concurrent requests at 3968 tokens", "theoretical_max_len": 8192,
        "practical_max_len": 3968, "practical_source": "vllm-estimate-confirmed",
        "cells": [{"max_num_seqs": 2, "max_model_len": 3968, "verdict": "PASS", "run_dir": "r", "metrics": {}}]}))
    data = matrix.build_matrix(runs, "m")
    assert data["capacity"]["practical_max_len"] == 3968 and data["capacity"]["cells"][0]["verdict"] == "PASS"
    assert "serves 2 concurrent requests at 3968 tokens" in matrix.render_markdown(data)


def test_all_features_verdict_ignores_isolation_switches(tmp_path):
    runs = tmp_path / "m"
    write(runs, _ascend("stage-b", "2026-08-14T10:00:00+00:00", {"name": "ACLGraph", "status": "PASS", "line": "Replaying aclgraph"}))
    write(runs, _ascend("eager", "2026-08-14T11:00:00+00:00", None, ["--enforce-eager"], verdict="FAIL"))
    data = matrix.build_matrix(runs, "m")
    assert data["features"]["eager"]["status"] == "FAIL"
    assert matrix.exit_code(data) == 0, "Stage B and every run default feature passed; the rest were not run"


def test_all_features_continues_past_a_failed_stage_and_exits_1(tmp_path, runs_dir):
    """scripts/all_features.sh with the fake launcher: Stage A false-ready (a failure after ready, not
    at startup), so Stage B still starts; the gates that do not apply say so without a server."""
    import subprocess

    model = tmp_path / "fm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["FakeForCausalLM"]}))
    env = base_env(runs_dir, BRINGUP_PROFILE_DIR=str(REPO / "tests/fixtures/profiles"), BACKEND="fake",
                   MODEL=str(model), PORT=str(free_port_between(18440, 18499)), READY_TIMEOUT="60",
                   FAKE_MODE="false-ready")
    result = subprocess.run([str(REPO / "scripts/all_features.sh")], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    order = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("== ")]
    assert order == ["stage-a", "ep", "flashcomm1", "mtp", "stage-b", "matrix"]  # step names, not functions
    assert "== matrix (2 server start(s) in this make all-features)" in result.stdout
    data = json.loads((runs_dir / "fm" / "matrix.json").read_text())
    assert data["stages"]["stage-b"]["status"] == "FAIL"
    assert {data["features"][f]["status"] for f in ("ep", "flashcomm1", "mtp")} == {"NOT_APPLICABLE"}
