"""Failure paths a real server cannot produce on demand here (stall, hang, crash at a chosen
moment, a 503 health): driven through the real stage runner with a fake launcher
(tests/fixtures/fake_server.py via the test-only `fake` backend profile)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port, run_cli


@pytest.fixture
def fake_env(tmp_path, runs_dir):
    model = tmp_path / "fake-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["FakeForCausalLM"]}))
    return base_env(runs_dir, BRINGUP_PROFILE_DIR=str(REPO / "tests/fixtures/profiles"), BACKEND="fake",
                    MODEL=str(model), PORT=str(free_port()), READY_TIMEOUT="60", STALL_TIMEOUT="30",
                    REQUEST_TIMEOUT="30")


def evidence(runs_dir: Path, step: str = "stage-a") -> dict:
    return json.loads((runs_dir / "fake-model" / f"latest-{step}" / "evidence.json").read_text())


def timed_stage(env) -> tuple[object, float]:
    started = time.monotonic()
    result = run_cli(["stage", "--stage", "a"], env, timeout=120)
    return result, time.monotonic() - started


def test_healthy_fake_passes(fake_env, runs_dir):
    result, _ = timed_stage(fake_env)
    assert result.returncode == 0, result.stdout + result.stderr
    record = evidence(runs_dir)
    assert record["verdict"] == "PASS" and [r["kind"] for r in record["requests"]] == ["text", "stream"]


def test_server_dying_at_startup_is_decided_at_once(fake_env, runs_dir):
    fake_env.update(FAKE_MODE="die-after-start", FAKE_DELAY="1", READY_TIMEOUT="600")
    result, seconds = timed_stage(fake_env)
    assert result.returncode == 1
    assert seconds < 8, "a dead server must be noticed within a second or two, not at the timeout"
    record = evidence(runs_dir)
    assert record["verdict"] == "FAIL" and record["readiness"]["state"] in ("exited", "fatal")
    assert "Engine core initialization failed" in json.dumps(record["root_cause"])
    assert record["category"] == "startup"  # never ready: not a false-ready


def test_stall_is_reported_with_its_last_phase_before_the_timeout(fake_env, runs_dir):
    fake_env.update(FAKE_MODE="stall", STALL_TIMEOUT="3", READY_TIMEOUT="600")
    result, seconds = timed_stage(fake_env)
    assert result.returncode == 1
    assert seconds < 15
    record = evidence(runs_dir)
    assert record["category"] == "stalled"
    assert "last phase" in record["reason"]


def test_health_503_is_never_ready(fake_env, runs_dir):
    fake_env.update(FAKE_MODE="health-503", READY_TIMEOUT="4", STALL_TIMEOUT="60")
    result, _ = timed_stage(fake_env)
    assert result.returncode == 1
    record = evidence(runs_dir)
    assert record["category"] == "timeout" and "/health 503" in record["reason"]


def test_false_ready_names_the_root_cause(fake_env, runs_dir):
    fake_env.update(FAKE_MODE="false-ready")
    result, seconds = timed_stage(fake_env)
    assert result.returncode == 1
    record = evidence(runs_dir)
    assert record["category"] == "false-ready"
    assert "fake kernel failure" in record["root_cause"]["text"]
    assert "false-ready" in result.stdout and "root cause" in result.stdout
    assert "next: make " in result.stdout and "hint: " in result.stdout  # the failure is explained
    assert record["diagnosis"]["next_command"].startswith("make ")


def test_hanging_request_times_out_with_a_clear_verdict(fake_env, runs_dir):
    fake_env.update(FAKE_MODE="hang-request", REQUEST_TIMEOUT="2")
    result, seconds = timed_stage(fake_env)
    assert result.returncode == 1
    assert seconds < 30
    record = evidence(runs_dir)
    assert record["verdict"] == "FAIL"
    assert "no reply within 2 s" in record["reason"]


def test_api_key_is_used_but_never_written(fake_env, runs_dir):
    fake_env.update(VLLM_API_KEY="sk-very-secret-42")
    result, _ = timed_stage(fake_env)
    assert result.returncode == 0
    run_dir = (runs_dir / "fake-model" / "latest-stage-a").resolve()
    for path in run_dir.iterdir():
        assert "sk-very-secret-42" not in path.read_text(errors="replace"), path.name
    assert "sk-very-secret-42" not in result.stdout + result.stderr
