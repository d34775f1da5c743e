"""`make capacity` against the real vLLM CPU backend with the tiny model and small numbers.

Six server starts in total, two of them at once:
  - a two-cell sweep with PARALLEL=2: both cells' servers run at the same time, each on its own port
    and run directory, with the verdicts and cell evidence a sequential sweep writes (2 starts);
  - the sweep widened by one cell, interrupted while that cell's server starts (the finished cells
    are reused, not rerun), then resumed to a pass (1 start + 1 start);
  - a length the KV budget cannot hold (refused, then vLLM's estimate confirmed by one more start).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port, kill_group_quietly, run_make, wait_for
from helpers import serve
from helpers.timeline import charts

pytestmark = pytest.mark.slow

# 4 MiB of KV cache: the tiny model needs 1 KiB per token, so about 4k tokens fit
KV_BYTES = 4 * 1024 * 1024


def capacity_doc(runs_dir: Path, model: str) -> dict:
    return json.loads((runs_dir / model / "capacity.json").read_text())


def sweep_in_parallel(runs_dir: Path, env: dict) -> subprocess.CompletedProcess:
    """`make capacity` with PARALLEL=2, watching which of our servers are alive together."""
    seen_at_once: list[set[int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            alive = {r.port for _, r in serve.recorded_servers(runs_dir) if r.is_alive_and_ours()}
            if len(alive) > 1:
                seen_at_once.append(alive)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_make("capacity", env, "PARALLEL=2", timeout=1200)
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stdout + result.stderr
    assert seen_at_once and max(len(ports) for ports in seen_at_once) == 2, "the two servers never ran at once"
    return result


@pytest.mark.slow(seconds=130)
def test_parallel_cells_then_an_interrupted_wider_sweep_resumes_without_redoing_finished_cells(runs_dir, tiny_dense,
                                                                                              tmp_path):
    model = tiny_dense.name
    env = base_env(runs_dir, MODEL=str(tiny_dense), PORT=str(free_port()), SWEEP="2 4", MAX_MODEL_LEN="2048")
    result = sweep_in_parallel(runs_dir, env)
    assert "[set] 2 runs, 2 at once: PARALLEL=2: 2 servers at once" in result.stdout
    assert "ran in the parallel set" in result.stdout
    doc = capacity_doc(runs_dir, model)
    assert doc["status"] == "done"
    assert [(c["key"], c["verdict"]) for c in doc["cells"]] == [("s2-l2048", "PASS"), ("s4-l2048", "PASS")]
    assert all(c["completed"] == c["max_num_seqs"] and c["failed"] == 0 and c["kv_cache_tokens"] >= 2048
               for c in doc["cells"])
    records = [json.loads((Path(c["run_dir"]) / "evidence.json").read_text()) for c in doc["cells"]]
    ports = [r["command"]["argv"][r["command"]["argv"].index("--port") + 1] for r in records]
    assert len(set(ports)) == 2 and len({r["run_dir"] for r in records}) == 2
    first, four = doc["cells"]
    assert first["metrics"]["total_output_tokens"] == 2 * 16, "fixed output length"
    assert four["metrics"]["mean_ttft_ms"] > 0 and four["metrics"]["output_throughput"] > 0
    assert four["server_metrics"]["samples"] >= 1 and four["server_metrics"]["max_running"] is not None
    assert doc["headline"].startswith("serves 2 concurrent requests at 2048 tokens; 4 at 2048;")
    assert doc["headline"] in (runs_dir / model / "capacity.md").read_text()
    # capacity.png: one point per cell, the numbers of capacity.json
    assert f"chart: {runs_dir / model / 'capacity.png'}" in result.stdout
    assert (runs_dir / model / "capacity.png").read_bytes()[:4] == b"\x89PNG"
    points = charts.capacity_points(doc)
    assert [(p["max_num_seqs"], p["max_model_len"]) for p in points] == [(2, 2048), (4, 2048)]
    for point, cell in zip(points, doc["cells"]):
        assert point["output_throughput"] == cell["metrics"]["output_throughput"]
        assert (point["p50_ttft_ms"], point["p99_ttft_ms"]) == (cell["metrics"]["p50_ttft_ms"], cell["metrics"]["p99_ttft_ms"])
        assert (point["p50_tpot_ms"], point["p99_tpot_ms"]) == (cell["metrics"]["p50_tpot_ms"], cell["metrics"]["p99_tpot_ms"])

    # one more cell; Ctrl-C while its server starts
    env = dict(env, SWEEP="2 4 8")
    log = (tmp_path / "make.out").open("w")
    make = subprocess.Popen(["make", "-s", "capacity"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        third = wait_for(lambda: next(iter(runs_dir.glob(f"{model}/2*-capacity-s8-l2048/serve.log")), None),
                         timeout=600, interval=0.5)
        assert third is not None, (tmp_path / "make.out").read_text()
        assert wait_for(lambda: third.stat().st_size > 0, timeout=120), "the third server never logged"
        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole group
        make.wait(timeout=120)
    finally:
        if make.poll() is None:
            kill_group_quietly(make.pid)
            make.wait()
        log.close()
    output = (tmp_path / "make.out").read_text()
    assert make.returncode != 0, output
    assert "cell s2-l2048: finished earlier (PASS), skipped" in output
    doc = capacity_doc(runs_dir, model)
    assert doc["status"] == "interrupted"
    assert [(c["key"], c["verdict"]) for c in doc["cells"]] == [("s2-l2048", "PASS"), ("s4-l2048", "PASS"),
                                                                ("s8-l2048", "INTERRUPTED")]
    interrupted = json.loads((third.parent / "evidence.json").read_text())
    assert interrupted["verdict"] == "INTERRUPTED" and interrupted["status"] == "done"
    assert not list(serve.recorded_servers(runs_dir)), "Ctrl-C leaves no server"

    resumed = run_make("capacity", env, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "cell s4-l2048: finished earlier (PASS), skipped" in resumed.stdout
    doc = capacity_doc(runs_dir, model)
    assert doc["status"] == "done"
    assert [(c["key"], c["verdict"]) for c in doc["cells"]] == [("s2-l2048", "PASS"), ("s4-l2048", "PASS"),
                                                                ("s8-l2048", "PASS")]
    assert doc["cells"][0]["run_dir"] == first["run_dir"], "the finished cell is not redone"
    assert len(list(runs_dir.glob(f"{model}/2*-capacity-s2-l2048"))) == 1
    assert len(list(runs_dir.glob(f"{model}/2*-capacity-s8-l2048"))) == 2, "the interrupted cell runs again"
    assert doc["cells"][2]["completed"] == 8
    assert doc["headline"].startswith("serves 2 concurrent requests at 2048 tokens; 4 at 2048; 8 at 2048;")
    assert (doc["practical_max_len"], doc["theoretical_max_len"]) == (2048, 8192)
    assert not subprocess.run(["make", "-s", "hygiene"], env=env, cwd=REPO, capture_output=True).returncode


@pytest.mark.slow(seconds=100)
def test_length_beyond_the_kv_budget_gives_the_practical_max_from_vllms_estimate(runs_dir, tiny_dense):
    model = tiny_dense.name
    env = base_env(runs_dir, MODEL=str(tiny_dense), PORT=str(free_port()), SWEEP="2", MAX_MODEL_LEN="8192",
                   EXTRA_ARGS=f"--kv-cache-memory-bytes {KV_BYTES}")
    started = time.monotonic()
    result = run_make("capacity", env, timeout=900)
    # make turns the helper's exit code 1 (the baseline failed) into its own 2 and names it
    assert result.returncode == 2 and "Error 1" in result.stderr, result.stdout + result.stderr
    doc = capacity_doc(runs_dir, model)
    refused, confirmed = doc["cells"][0], doc["cells"][1]
    assert (refused["max_model_len"], refused["verdict"], refused["category"]) == (8192, "FAIL", "kv-too-small")
    estimate = refused["estimated_max_model_len"]
    assert estimate and 1024 < estimate < 8192
    assert f"the estimated maximum model length is {estimate}" in refused["root_cause"]
    assert (confirmed["role"], confirmed["max_model_len"], confirmed["verdict"]) == ("practical-search", estimate, "PASS")
    assert (doc["practical_max_len"], doc["practical_source"]) == (estimate, "vllm-estimate-confirmed")
    assert len(doc["cells"]) == 2, "one more start confirms the estimate; no bisection"
    assert f"practical max length {estimate} of theoretical 8192" in doc["headline"]
    command = (Path(confirmed["run_dir"]) / "command.sh").read_text()
    assert "unset VLLM_CPU_KVCACHE_SPACE" in command and f"--kv-cache-memory-bytes {KV_BYTES}" in command
    assert time.monotonic() - started < 900
