"""Safety on a shared box: only our processes are touched, interrupts and hard kills leave
evidence and no orphan, runs do not collide. Driven with the fake launcher
(tests/fixtures/fake_server.py) where the fault has to be timed precisely; real process groups,
real signals, real sockets throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port, run_cli, run_make, wait_for
from helpers import evidence as ev
from helpers import serve, settings


@pytest.fixture
def fake_model(tmp_path) -> Path:
    model = tmp_path / "fake-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["FakeForCausalLM"]}))
    return model


def fake_env(runs_dir: Path, model: Path, **extra: str) -> dict[str, str]:
    values = dict(BRINGUP_PROFILE_DIR=str(REPO / "tests/fixtures/profiles"), BACKEND="fake", MODEL=str(model),
                  PORT=str(free_port()), READY_TIMEOUT="60", STALL_TIMEOUT="30", REQUEST_TIMEOUT="60")
    values.update(extra)
    return base_env(runs_dir, **values)


def start_stage(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(["scripts/stage.sh", "a"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def server_record(runs_dir: Path) -> dict:
    path = wait_for(lambda: next(runs_dir.glob("fake-model/*-stage-a/server.json"), None), 30)
    assert path, "server never started"
    return json.loads(path.read_text())


def test_default_bind_is_loopback(monkeypatch):
    monkeypatch.delenv("HOST", raising=False)
    assert settings.load().host == "127.0.0.1"


def test_run_dirs_are_unique_within_one_second(tmp_path):
    dirs = {ev.new_run_dir(tmp_path, "m", "stage-a") for _ in range(5)}
    assert len(dirs) == 5 and all(d.is_dir() for d in dirs)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_requests_stops_the_group_and_records_interrupted(runs_dir, fake_model, signum):
    env = fake_env(runs_dir, fake_model, FAKE_MODE="hang-request")
    proc = start_stage(env)
    record = server_record(runs_dir)
    assert wait_for(lambda: (Path(record["run_dir"]) / "requests.jsonl").exists()
                    or "sending smoke" in Path(record["run_dir"], "serve.log").read_text()
                    or _ready(record), 30)
    time.sleep(1.0)  # the first request is now hanging inside the server
    os.killpg(proc.pid, signum)
    proc.communicate(timeout=60)
    evidence = json.loads((Path(record["run_dir"]) / "evidence.json").read_text())
    assert evidence["verdict"] == "INTERRUPTED"
    assert signal.Signals(signum).name in evidence["reason"]
    assert evidence["status"] == "done"
    assert not serve.group_members(record["pgid"])
    assert not list((runs_dir / ".state").glob("*.json"))


def test_ctrl_c_while_the_server_starts_returns_within_5_s(runs_dir, fake_model):
    """vLLM ignores SIGTERM while it starts (the fake does too): the stop must escalate at once
    on an interrupt instead of waiting out the graceful grace."""
    env = fake_env(runs_dir, fake_model, FAKE_MODE="stall", FAKE_IGNORE_TERM="1", STALL_TIMEOUT="600",
                   READY_TIMEOUT="600")
    proc = start_stage(env)
    record = server_record(runs_dir)
    assert wait_for(lambda: "KV cache size" in Path(record["run_dir"], "serve.log").read_text(), 30)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert time.monotonic() - started < 5, "Ctrl-C during start-up must return within 5 s"
    assert proc.returncode == 130
    assert not serve.group_members(record["pgid"]), "the starting server must not survive the interrupt"
    evidence = json.loads((Path(record["run_dir"]) / "evidence.json").read_text())
    assert evidence["verdict"] == "INTERRUPTED" and evidence["stop"].startswith("killed")


def _ready(record: dict) -> bool:
    return "Application startup complete" in Path(record["run_dir"], "serve.log").read_text()


def test_tool_killed_hard_leaves_valid_evidence_and_hygiene_cleans_up(runs_dir, fake_model):
    env = fake_env(runs_dir, fake_model, FAKE_MODE="stall", STALL_TIMEOUT="600", READY_TIMEOUT="600")
    proc = start_stage(env)
    record = server_record(runs_dir)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the tool and its shell die; the server (own group) lives on
    proc.wait(timeout=10)
    assert serve.group_members(record["pgid"]), "the server outlives a SIGKILLed tool"
    evidence = json.loads((Path(record["run_dir"]) / "evidence.json").read_text())  # still valid JSON
    assert evidence["status"] == "running" and evidence["server"]["pid"] == record["pid"]
    assert (runs_dir / ".state" / f"port-{record['port']}.json").exists()
    result = run_make("hygiene", env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"stopped our server pid {record['pid']}" in result.stdout
    assert not serve.group_members(record["pgid"])


def test_hygiene_never_touches_a_reused_pid(runs_dir, fake_model):
    """A state file whose pid now belongs to another process (different start time) is dropped,
    and that process survives."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        port = free_port()
        record = serve.ServerRecord(pid=bystander.pid, pgid=bystander.pid,
                                    start_ticks=(serve.process_start_ticks(bystander.pid) or 0) - 1,
                                    port=port, host="127.0.0.1", run_dir="x", token="t", owner_pid=1, command="vllm")
        ev.atomic_write_json(serve.state_file(runs_dir, port), record.__dict__)
        result = run_cli(["hygiene"], base_env(runs_dir, PORT=str(free_port())))
        assert result.returncode == 0, result.stderr
        assert "pid was reused" in result.stdout
        time.sleep(0.3)
        assert bystander.poll() is None, "a process we did not start must never be signalled"
        assert not serve.state_file(runs_dir, port).exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_someone_elses_server_on_another_port_is_untouched(runs_dir, fake_model):
    other_env = fake_env(runs_dir / "colleague", fake_model)
    (runs_dir / "colleague").mkdir()
    colleague = subprocess.Popen([sys.executable, "tests/fixtures/fake_server.py", "--port", other_env["PORT"]],
                                 cwd=REPO, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        result = run_cli(["stage", "--stage", "a"], fake_env(runs_dir, fake_model))
        assert result.returncode == 0, result.stderr
        assert run_cli(["hygiene"], fake_env(runs_dir, fake_model)).returncode == 0
        assert colleague.poll() is None
    finally:
        colleague.kill()
        colleague.wait()


def test_two_runs_at_once_on_different_ports_do_not_interfere(runs_dir, fake_model):
    envs = [fake_env(runs_dir, fake_model), fake_env(runs_dir, fake_model)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda e: run_cli(["stage", "--stage", "a"], e, timeout=120), envs))
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    records = [json.loads(p.read_text()) for p in runs_dir.glob("fake-model/[0-9]*-stage-a*/evidence.json")]
    assert len(records) == 2 and {r["verdict"] for r in records} == {"PASS"}
    assert len({r["run_dir"] for r in records}) == 2
    ports = {r["command"]["argv"][r["command"]["argv"].index("--port") + 1] for r in records}
    assert ports == {envs[0]["PORT"], envs[1]["PORT"]}


def test_junit_reports_the_verdict(runs_dir, fake_model, tmp_path):
    junit = tmp_path / "out" / "junit.xml"
    env = fake_env(runs_dir, fake_model, FAKE_MODE="false-ready", JUNIT=str(junit))
    result = run_cli(["stage", "--stage", "a"], env)
    assert result.returncode == 1
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "1" and suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and "false-ready" in failure.get("message")


def test_evidence_of_earlier_runs_is_never_overwritten(runs_dir, fake_model):
    env = fake_env(runs_dir, fake_model)
    for _ in range(2):
        assert run_cli(["stage", "--stage", "a"], env).returncode == 0
    runs = sorted(runs_dir.glob("fake-model/[0-9]*-stage-a*"))
    assert len(runs) == 2
    latest = (runs_dir / "fake-model" / "latest-stage-a").resolve()
    assert latest == runs[-1]
