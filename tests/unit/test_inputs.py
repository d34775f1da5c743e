"""Bad input gets one clear line and exit code 2 (3 for a missing environment), no traceback.
These run the real CLI and make; no server is started (each case fails before that)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, base_env, free_port, run_cli, run_make


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def env(tmp_path):
    return base_env(tmp_path / "runs")


@pytest.mark.parametrize("setup, overrides, code, expect", [
    ("none", {}, 2, "MODEL is not set"),
    ("none", {"MODEL": "/nonexistent/model"}, 2, "no checkpoint directory at /nonexistent/model"),
    ("no-config", {}, 2, "no config.json in"),
    ("bad-json", {}, 2, "config.json"),
    ("ok", {"BACKEND": "tpu"}, 2, "BACKEND='tpu' is unknown"),
    ("ok", {"PORT": "80a"}, 2, "PORT='80a' is not a whole number"),
    ("ok", {"TP": "two"}, 2, "TP='two' is not a whole number"),
    ("ok", {"MAX_MODEL_LEN": "lots"}, 2, "MAX_MODEL_LEN='lots' is not a length"),
    ("ok", {"EXTRA_ARGS": "--x 'open"}, 2, "EXTRA_ARGS cannot be split"),
    ("ok", {"BACKEND": "replay"}, 2, "REPLAY_SCENARIO is not set"),
    ("ok", {"BACKEND": "replay", "REPLAY_SCENARIO": "nonesuch"}, 2, "unknown scenario 'nonesuch'"),
])
def test_bad_input_one_line_exit_2(tmp_path, env, setup, overrides, code, expect):
    model = tmp_path / "model"
    model.mkdir()
    if setup == "bad-json":
        (model / "config.json").write_text("{not json")
    elif setup == "ok":
        (model / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    if setup != "none":
        env["MODEL"] = str(model)
    env.update(overrides)
    result = run_cli(["stage", "--stage", "a"], env)
    assert result.returncode == code, result.stderr
    assert expect in one_line_error(result)


def test_missing_vllm_is_an_environment_problem(tmp_path, env):
    profile_dir = tmp_path / "profiles"
    profile_dir.mkdir()
    (profile_dir / "nonpu.yaml").write_text(
        "name: nonpu\nlauncher: [vllm, serve, '{model}']\nrequires: {modules: [vllm_ascend_not_here], commands: []}\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    env.update(BRINGUP_PROFILE_DIR=str(profile_dir), BACKEND="nonpu", MODEL=str(model))
    result = run_cli(["stage", "--stage", "a"], env)
    assert result.returncode == 3
    assert "'vllm_ascend_not_here' is not importable" in one_line_error(result)


def test_busy_port_is_refused_and_the_holder_survives(tmp_path, env, tiny_dense):
    """A listener that is not ours holds PORT: refuse with its pid (exit 3), never touch it."""
    port = free_port()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',%d)); s.listen(); "
                               "print('up', flush=True); time.sleep(120)" % port], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "up"
        env.update(MODEL=str(tiny_dense), PORT=str(port))
        result = run_make("stage-a", env)
        assert result.returncode != 0
        assert f"pid {holder.pid}" in result.stderr
        assert "not ours, left untouched" in result.stderr
        assert holder.poll() is None, "the other process must survive"
        assert not list((tmp_path / "runs").rglob("serve.log")), "no server may be started"
        hygiene = run_make("hygiene", env)
        assert hygiene.returncode != 0 and f"pid {holder.pid}" in hygiene.stderr
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_make_passes_hostile_values_as_data(tmp_path, env):
    """MODEL with spaces, quotes, $() and ; reaches Python verbatim and executes nothing."""
    hostile = str(tmp_path / "m o'd\"el $(touch PWNED); ü")
    env["MODEL"] = hostile
    result = run_make("stage-a", env, timeout=60)
    assert result.returncode != 0
    assert hostile in result.stderr  # the one line names the exact value
    assert not (REPO / "PWNED").exists() and not (tmp_path / "PWNED").exists()
    result = run_make("stage-a", base_env(tmp_path / "runs"), f"MODEL={hostile}", timeout=60)
    assert hostile in result.stderr
    assert not (REPO / "PWNED").exists()


def test_make_tiny_model_takes_its_defaults_from_env_example(tmp_path, env):
    """Unset variables are not exported by make; the helper reads env.example's defaults."""
    env["TINY_DIR"] = str(tmp_path / "tiny")
    result = run_make("tiny-model", env, timeout=120)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]  # TINY_KIND ?= dense
    assert (tmp_path / "tiny" / "model.safetensors").is_file()  # TINY_WEIGHTS ?= real
    env["TINY_KIND"] = "huge"
    bad = subprocess.run(["scripts/tiny_model.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "TINY_KIND='huge'" in one_line_error(bad)


def test_a_port_let_go_a_moment_later_is_waited_for_and_a_connection_on_it_is_named():
    """Sockets on a port that is not listening: hygiene, having just stopped our server, waits a
    moment for the kernel to give the port back; a port still taken is described by its sockets'
    TCP states (here a connection whose own port it is), not as a process one cannot see."""
    import threading

    from helpers import serve

    port = free_port()
    held = socket.socket()
    held.bind(("127.0.0.1", port))
    held.listen()
    threading.Timer(0.5, held.close).start()
    assert serve.wait_port_free("127.0.0.1", port, 0.0) is False
    started = time.monotonic()
    assert serve.wait_port_free("127.0.0.1", port, 5.0) is True and time.monotonic() - started < 4

    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.bind(("127.0.0.1", port))
        client.connect(server.getsockname())
        assert not serve.port_is_free("127.0.0.1", port)
        assert serve.describe_port_holders(port).startswith("sockets in state ESTABLISHED and no listener")
