"""Accuracy plumbing without vLLM: lm-eval's results JSON (a real one, recorded from the CPU run),
the serve block, bad input, and the reuse / refusal / server-death paths against the small fake
OpenAI server (tests/fixtures/fake_server.py), which a real server cannot reach on demand.
lm-eval itself is real and comes through `make accuracy` (scripts/accuracy.sh installs it)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port_between, run_cli, run_make, wait_for
from helpers import accuracy, e2e, profiles
from helpers.errors import UsageError
from helpers.evidence import atomic_write_json, new_run_dir
from helpers.plan import build_plan
from helpers.readiness import base_url, probe_ready
from helpers.serve import Server

RESULTS = REPO / "tests/fixtures/lm_eval_results/results_tiny_gsm8k.json"
TINY_TASK = REPO / "tests/fixtures/lm_eval_tiny"
PROFILES = REPO / "tests/fixtures/profiles"


def port_in_range() -> int:
    return free_port_between(18340, 18399)


def test_results_keep_lm_eval_metric_names_exactly(tmp_path):
    tasks = accuracy.parse_results(RESULTS, ["tiny_gsm8k"], None)
    assert tasks == [{"name": "tiny_gsm8k", "num_fewshot": 2, "limit": None, "samples": 4,
                      "metrics": {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 0.0},
                      "stderr": {"exact_match_stderr,strict-match": 0.0,
                                 "exact_match_stderr,flexible-extract": 0.0}}]
    with pytest.raises(UsageError, match="hold no task 'gsm8k'"):
        accuracy.parse_results(RESULTS, ["gsm8k"], None)


def test_serve_block_from_recorded_argv():
    argv = ["vllm", "serve", "/models/m", "--trust-remote-code", "--dtype", "bfloat16", "--max-model-len", "128K",
            "--tensor-parallel-size", "16", "--enable-expert-parallel", "--gpu-memory-utilization=0.9",
            "--max-num-seqs", "16", "--enforce-eager", "--port", "8000"]
    assert e2e.serve_block(argv) == {
        "trust_remote_code": True, "dtype": "bfloat16", "max_model_len": 131072, "tensor_parallel_size": 16,
        "enable_expert_parallel": True, "gpu_memory_utilization": 0.9, "enforce_eager": True}


@pytest.fixture
def model_dir(tmp_path):
    model = tmp_path / "models" / "tiny-fake"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    return model


@pytest.mark.parametrize("overrides, expect", [
    ({"DATASET_DIR": "/nonexistent/data"}, "DATASET_DIR='/nonexistent/data' is not a directory"),
    ({"LIMIT": "ten"}, "LIMIT='ten' is neither a count nor a fraction"),
    ({"NUM_FEWSHOT": "five"}, "NUM_FEWSHOT='five' is not a whole number"),
    ({"TASKS": " , "}, "TASKS is empty"),
])
def test_bad_input_one_line_exit_2(tmp_path, model_dir, overrides, expect):
    env = base_env(tmp_path / "runs", MODEL=str(model_dir), **overrides)
    result = run_cli(["accuracy"], env, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expect in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("accuracy.json"))


def start_fake(runs_dir: Path, model_dir: Path, port: int, *, stage: str, mode: str = "ready",
               evidence_model: str | None = None) -> Server:
    """A fake server recorded as ours, with the evidence.json of the run that 'started' it."""
    os.environ["BRINGUP_PROFILE_DIR"] = str(PROFILES)
    try:
        profile = profiles.load("fake")
    finally:
        os.environ.pop("BRINGUP_PROFILE_DIR")
    plan = build_plan(profile, model_path=str(model_dir), served_name="tiny-fake", stage=stage,
                      host="127.0.0.1", port=port)
    plan.cwd = str(REPO)
    run_dir = new_run_dir(runs_dir, evidence_model or model_dir.name, f"stage-{stage}")
    atomic_write_json(run_dir / "evidence.json", {
        "step": f"stage-{stage}", "stage": stage, "model": evidence_model or model_dir.name,
        "served_name": "tiny-fake", "command": {"argv": plan.argv}})
    env = dict(os.environ, FAKE_MODE=mode)
    server = Server.start(plan, run_dir / "serve.log", runs_dir, "test-token", base_env=env)
    assert wait_for(lambda: probe_ready(base_url("127.0.0.1", port), "tiny-fake")[0], 30), "fake server not ready"
    return server


def test_reuses_our_running_server_and_leaves_it_running(runs_dir, model_dir):
    port = port_in_range()
    server = start_fake(runs_dir, model_dir, port, stage="b")
    try:
        env = base_env(runs_dir, MODEL=str(model_dir), PORT=str(port), BACKEND="fake",
                       BRINGUP_PROFILE_DIR=str(PROFILES), TASKS="tiny_gsm8k", NUM_FEWSHOT="1",
                       DATASET_DIR=str(TINY_TASK))
        result = run_make("accuracy", env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "using our running server" in result.stdout
        record = json.loads((runs_dir / "tiny-fake/latest-accuracy/accuracy.json").read_text())
        assert record["verdict"] == "PASS" and record["server"]["reused"] is True
        assert set(record["tasks"][0]["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
        assert record["tasks"][0]["num_fewshot"] == 1
        assert server.alive(), "a reused server is not ours to stop"
        assert not (runs_dir / "tiny-fake/latest-accuracy/serve.log").exists()
    finally:
        server.stop()


@pytest.mark.parametrize("stage, evidence_model, expect", [
    ("a", None, "serves dummy weights (Stage A"),
    ("b", "another-model", "held by our server for 'another-model'"),
])
def test_refuses_a_server_it_cannot_measure(runs_dir, model_dir, stage, evidence_model, expect):
    port = port_in_range()
    server = start_fake(runs_dir, model_dir, port, stage=stage, evidence_model=evidence_model)
    try:
        env = base_env(runs_dir, MODEL=str(model_dir), PORT=str(port), BACKEND="fake",
                       BRINGUP_PROFILE_DIR=str(PROFILES), DATASET_DIR=str(TINY_TASK), TASKS="tiny_gsm8k")
        result = run_cli(["accuracy"], env, timeout=120)
        assert result.returncode == 3, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and expect in result.stderr
        assert server.alive()
    finally:
        server.stop()


def test_server_death_during_lm_eval_fails_at_once(runs_dir, model_dir):
    """false-ready: the fake server exits on its first request; the verdict must not wait for
    lm-eval's retries and timeouts."""
    port = port_in_range()
    server = start_fake(runs_dir, model_dir, port, stage="b", mode="false-ready")
    try:
        env = base_env(runs_dir, MODEL=str(model_dir), PORT=str(port), BACKEND="fake",
                       BRINGUP_PROFILE_DIR=str(PROFILES), TASKS="tiny_gsm8k", NUM_FEWSHOT="0",
                       DATASET_DIR=str(TINY_TASK))
        started = time.monotonic()
        result = run_make("accuracy", env)
        assert result.returncode != 0
        record = json.loads((runs_dir / "tiny-fake/latest-accuracy/accuracy.json").read_text())
        assert record["verdict"] == "FAIL"
        assert record["reason"] == "the server died while lm-eval was running"
        assert time.monotonic() - started < 120
    finally:
        server.stop()


def test_interrupt_stops_lm_eval_and_leaves_evidence(runs_dir, model_dir):
    """Ctrl-C while lm-eval runs: exit 130, accuracy.json says INTERRUPTED, lm-eval's process
    group is gone, and the reused server (not ours to stop) keeps running."""
    import signal
    import subprocess
    import sys

    port = port_in_range()
    server = start_fake(runs_dir, model_dir, port, stage="b", mode="hang-request")
    try:
        env = base_env(runs_dir, MODEL=str(model_dir), PORT=str(port), BACKEND="fake",
                       BRINGUP_PROFILE_DIR=str(PROFILES), TASKS="tiny_gsm8k", NUM_FEWSHOT="0",
                       DATASET_DIR=str(TINY_TASK))
        cli = subprocess.Popen([sys.executable, "-m", "helpers", "accuracy"], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        record_path = runs_dir / "tiny-fake"

        def lm_eval_pid():
            for path in record_path.glob("*-accuracy/accuracy.json"):
                pid = json.loads(path.read_text()).get("lm_eval", {}).get("pid")
                if pid:
                    return path, pid
            return None

        found = wait_for(lm_eval_pid, 120, interval=0.5)
        assert found, "lm-eval never started"
        path, pid = found
        time.sleep(3)  # let it reach the hanging request
        cli.send_signal(signal.SIGINT)
        cli.communicate(timeout=60)
        assert cli.returncode == 130
        record = json.loads(path.read_text())
        assert record["verdict"] == "INTERRUPTED" and record["status"] == "done"

        def gone() -> bool:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return True
            return False

        assert wait_for(gone, 20), "lm-eval's process group survived the interrupt"
        assert server.alive()
    finally:
        server.stop()
