"""`make capacity` against the real vLLM CPU backend with the tiny model and small numbers.

Five server starts in total: an interrupted two-cell sweep (2 starts) resumed to a pass
(1 start, the finished cell is reused), and a length the KV budget cannot hold (refused, then
vLLM's estimate confirmed by one more start).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, base_env, kill_group_quietly, run_make, wait_for
from helpers.timeline import charts

pytestmark = pytest.mark.slow

# 4 MiB of KV cache: the tiny model needs 1 KiB per token, so about 4k tokens fit
KV_BYTES = 4 * 1024 * 1024


def capacity_doc(runs_dir: Path, model: str) -> dict:
    return json.loads((runs_dir / model / "capacity.json").read_text())


def test_interrupted_sweep_resumes_without_redoing_the_finished_cell(runs_dir, tiny_dense, tmp_path):
    model = tiny_dense.name
    env = base_env(runs_dir, MODEL=str(tiny_dense), PORT="18231", SWEEP="2 4", MAX_MODEL_LEN="2048")
    log = (tmp_path / "make.out").open("w")
    make = subprocess.Popen(["make", "-s", "capacity"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        second = wait_for(lambda: next(iter(runs_dir.glob(f"{model}/2*-capacity-s4-l2048/serve.log")), None),
                          timeout=600, interval=0.5)
        assert second is not None, (tmp_path / "make.out").read_text()
        assert wait_for(lambda: second.stat().st_size > 0, timeout=120), "the second server never logged"
        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole group
        make.wait(timeout=120)
    finally:
        if make.poll() is None:
            kill_group_quietly(make.pid)
            make.wait()
        log.close()
    output = (tmp_path / "make.out").read_text()
    assert make.returncode != 0, output
    doc = capacity_doc(runs_dir, model)
    assert doc["status"] == "interrupted"
    assert [(c["key"], c["verdict"]) for c in doc["cells"]] == [("s2-l2048", "PASS"), ("s4-l2048", "INTERRUPTED")]
    first = doc["cells"][0]
    assert (first["completed"], first["failed"]) == (2, 0)
    assert first["kv_cache_tokens"] and first["kv_cache_tokens"] >= 2048
    assert first["metrics"]["total_output_tokens"] == 2 * 16, "fixed output length"
    interrupted = json.loads((second.parent / "evidence.json").read_text())
    assert interrupted["verdict"] == "INTERRUPTED" and interrupted["status"] == "done"

    resumed = run_make("capacity", env, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "cell s2-l2048: finished earlier (PASS), skipped" in resumed.stdout
    doc = capacity_doc(runs_dir, model)
    assert doc["status"] == "done"
    assert [(c["key"], c["verdict"]) for c in doc["cells"]] == [("s2-l2048", "PASS"), ("s4-l2048", "PASS")]
    assert doc["cells"][0]["run_dir"] == first["run_dir"], "the finished cell is not redone"
    assert len(list(runs_dir.glob(f"{model}/2*-capacity-s2-l2048"))) == 1
    assert len(list(runs_dir.glob(f"{model}/2*-capacity-s4-l2048"))) == 2, "the interrupted cell runs again"
    four = doc["cells"][1]
    assert (four["completed"], four["failed"]) == (4, 0)
    assert four["metrics"]["mean_ttft_ms"] > 0 and four["metrics"]["output_throughput"] > 0
    assert four["server_metrics"]["samples"] >= 1 and four["server_metrics"]["max_running"] is not None
    assert doc["headline"].startswith("serves 2 concurrent requests at 2048 tokens; 4 at 2048;")
    assert (doc["practical_max_len"], doc["theoretical_max_len"]) == (2048, 8192)
    assert doc["headline"] in (runs_dir / model / "capacity.md").read_text()
    # capacity.png: one point per cell, the numbers of capacity.json
    assert f"chart: {runs_dir / model / 'capacity.png'}" in resumed.stdout
    assert (runs_dir / model / "capacity.png").read_bytes()[:4] == b"\x89PNG"
    points = charts.capacity_points(doc)
    assert [(p["max_num_seqs"], p["max_model_len"]) for p in points] == [(2, 2048), (4, 2048)]
    for point, cell in zip(points, doc["cells"]):
        assert point["output_throughput"] == cell["metrics"]["output_throughput"]
        assert (point["p50_ttft_ms"], point["p99_ttft_ms"]) == (cell["metrics"]["p50_ttft_ms"], cell["metrics"]["p99_ttft_ms"])
        assert (point["p50_tpot_ms"], point["p99_tpot_ms"]) == (cell["metrics"]["p50_tpot_ms"], cell["metrics"]["p99_tpot_ms"])


def test_length_beyond_the_kv_budget_gives_the_practical_max_from_vllms_estimate(runs_dir, tiny_dense):
    model = tiny_dense.name
    env = base_env(runs_dir, MODEL=str(tiny_dense), PORT="18232", SWEEP="2", MAX_MODEL_LEN="8192",
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
