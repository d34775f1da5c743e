"""Shared test fixtures.

Integration tests start the real vLLM CPU server (marked `slow`); every test that starts one
uses its own RUNS_DIR, and the `no_leaked_servers` guard stops (and fails on) any server a test
left behind, by the pids recorded in that RUNS_DIR's state files, never by name.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
sys.path.insert(0, str(REPO))

from helpers import serve, settings  # noqa: E402
from helpers import tinymodel  # noqa: E402


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _first_bindable(ports, where: str) -> int:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port {where}")


def free_port() -> int:
    """A free port below the kernel's ephemeral range, at random. A port the kernel hands out from
    that range can be the source port of any outgoing connection a moment later: a server then
    cannot bind it, and `make hygiene` finds a holder it cannot name."""
    low, high = 20000, _ephemeral_low() - 1
    if high - low < 1000:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    return _first_bindable((random.randint(low, high) for _ in range(100)), f"between {low} and {high}")


def free_port_between(low: int, high: int) -> int:
    """A free port in [low, high] (for machines where each engineer has a port range). Under
    pytest-xdist each worker takes every n-th port of the range from its own offset: two tests on two
    workers never pick the same port in the moment before a server binds it."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return _first_bindable(range(low + worker, high + 1, workers), f"between {low} and {high}")


def server_seconds(item) -> float:
    """What a server test declares it takes on an idle 2-core machine (`slow(seconds=N)`); 0 for
    the tests that start no real server."""
    marker = item.get_closest_marker("slow")
    return 0.0 if marker is None else float(marker.kwargs.get("seconds", 60))


def pytest_collection_modifyitems(config, items) -> None:
    """The server tests first, longest first. Under SERVER_LANE=k/n (scripts/test.sh runs n lanes
    at once) only the server tests of lane k run: each goes to the lane with the fewest seconds so
    far, longest first, so the lanes end together. A stable sort: the other tests keep their order."""
    items.sort(key=server_seconds, reverse=True)
    lane = os.environ.get("SERVER_LANE", "")
    if not lane:
        return
    mine, lanes = (int(part) for part in lane.split("/"))
    totals = [0.0] * lanes
    keep, drop = [], []
    for item in items:
        if item.get_closest_marker("slow") is None:
            drop.append(item)
            continue
        chosen = totals.index(min(totals))
        totals[chosen] += server_seconds(item)
        (keep if chosen == mine - 1 else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


# Triage's reusable answers (CACHE_DIR) are shared by the tests of a session, as by a user's
# RUNS_DIRs: the tiny models are deterministic, so each layout's weight coverage is built once, not
# in every test's fresh RUNS_DIR (about 5 CPU-s each). Tests of the cache itself set their own.
SHARED_CACHE_DIR: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def shared_cache_dir(tmp_path_factory):
    """For the helpers a test runs (base_env) and those it calls in-process (settings.load)."""
    global SHARED_CACHE_DIR
    SHARED_CACHE_DIR = tmp_path_factory.mktemp("shared-cache")
    before = os.environ.get("CACHE_DIR")
    os.environ["CACHE_DIR"] = str(SHARED_CACHE_DIR)
    yield SHARED_CACHE_DIR
    if before is None:
        os.environ.pop("CACHE_DIR", None)
    else:
        os.environ["CACHE_DIR"] = before


def base_env(runs_dir: Path, **extra: str) -> dict[str, str]:
    # Start from a clean slate: no variable of env.example leaks in from the caller (make exports
    # them when it runs the suite), so every test sees env.example's defaults unless it says so.
    # Nor the run token and given variables `make test` itself exported (scripts/lib.sh, Makefile):
    # every make a test runs names its own run, as a user's would, so one step's EXIT trap never
    # stops a server another step left running (make serve).
    documented = set(settings.documented_variables())
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAKE", "MFLAGS", "BRINGUP_")) and k not in documented}
    env.update({"PYTHONPATH": str(REPO), "RUNS_DIR": str(runs_dir), "BACKEND": "cpu",
                "VENV": str(Path(PYTHON).parent.parent), "READY_TIMEOUT": "600"})
    if SHARED_CACHE_DIR is not None:
        env["CACHE_DIR"] = str(SHARED_CACHE_DIR)
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "helpers", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def run_make(target: str, env: dict[str, str], *variables: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", target, *variables], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def latest_run(runs_dir: Path, model: str, step: str) -> Path:
    return (runs_dir / model / f"latest-{step}").resolve()


@pytest.fixture
def runs_dir(tmp_path: Path):
    """A private RUNS_DIR; any server still recorded there at teardown is stopped and reported."""
    directory = tmp_path / "runs"
    directory.mkdir()
    yield directory
    leaked = [record for _, record in serve.recorded_servers(directory) if record.verified_members()]
    serve.stop_recorded(directory, say=lambda _line: None)
    assert not leaked, f"test left servers running: {[r.pid for r in leaked]}"


@pytest.fixture(scope="session")
def tiny_dense(tmp_path_factory) -> Path:
    """The default dense tiny model with real (random, deterministic) weights."""
    return tinymodel.generate(tmp_path_factory.mktemp("models") / "tiny-dense", weights="real")


def wait_for(predicate, timeout: float, interval: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def kill_group_quietly(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- issue 13: checkpoints shaped like the model a replay scenario recorded ----------------------
# The toolkit triages the model directory it is given; on the replay backend that directory has to
# be the scenario's model (architecture, MoE, MTP, VL, max_position_embeddings), in tiny. Heads are
# 8 / 4 KV heads so triage plans TP like it would for the real models (8 on an 8-NPU A2 box).
TINY_SHAPES = {
    "qwen3-dense": dict(qk_norm=True, num_heads=8, num_kv_heads=4, max_position_embeddings=40960,
                        # Qwen3-8B as Qwen documents it for 131072 tokens (YaRN, factor 4)
                        extra_config={"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                       "original_max_position_embeddings": 32768}}),
    "qwen3-moe": dict(kind="moe", num_heads=8, num_kv_heads=4, max_position_embeddings=40960),
    "qwen3-moe-256k": dict(kind="moe", num_heads=8, num_kv_heads=4, max_position_embeddings=262144),
    "deepseek-v3": dict(kind="moe", num_heads=8, num_kv_heads=8, max_position_embeddings=163840, mtp_layers=1,
                        extra_config={"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
                                      "n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 0}),
    # a DeepSeek-V3 derivative that declares its MTP layer but ships no weights for it
    "deepseek-v3-no-mtp": dict(kind="moe", num_heads=8, num_kv_heads=8, max_position_embeddings=163840, mtp_layers=1,
                               mtp_weights=False,
                               extra_config={"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
                                             "n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 0}),
    "minicpmv": dict(kind="vl", max_position_embeddings=32768,
                     extra_config={"architectures": ["MiniCPMV"], "model_type": "minicpmv"}),
}


def tiny_shaped(directory: Path, shape: str) -> Path:
    spec = tinymodel.TinySpec(**TINY_SHAPES[shape])
    return tinymodel.generate(directory, weights="dummy" if spec.kind == "vl" else "real", spec=spec)


def linked_copy(source: Path, target: Path) -> Path:
    """A checkpoint under another name without copying weights (hard links: same bytes, same stat)."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        os.link(path, target / path.name)
    return target
