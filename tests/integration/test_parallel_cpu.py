"""Two small real vLLM CPU servers at once (PARALLEL=2): `make capacity` runs its two cells side by
side, each on its own port and run directory, with the same verdicts and cell evidence a
sequential sweep writes. Two server starts, overlapping in time."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from conftest import REPO, base_env, free_port, run_make
from helpers import serve

pytestmark = pytest.mark.slow


def test_two_capacity_cells_run_at_once_on_their_own_ports_and_run_dirs(runs_dir, tiny_dense):
    model = tiny_dense.name
    env = base_env(runs_dir, MODEL=str(tiny_dense), PORT=str(free_port()), SWEEP="2 4", MAX_MODEL_LEN="2048",
                   PARALLEL="2")
    seen_at_once: list[set[int]] = []
    done = threading.Event()

    def watch() -> None:  # which of our servers are alive together, as the sweep runs
        while not done.is_set():
            alive = {r.port for _, r in serve.recorded_servers(runs_dir) if r.is_alive_and_ours()}
            if len(alive) > 1:
                seen_at_once.append(alive)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_make("capacity", env, timeout=1200)
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stdout + result.stderr
    assert seen_at_once and max(len(ports) for ports in seen_at_once) == 2, "the two servers never ran at once"
    assert "[set] 2 runs, 2 at once: PARALLEL=2: 2 servers at once" in result.stdout
    doc = json.loads((runs_dir / model / "capacity.json").read_text())
    cells = {c["key"]: c for c in doc["cells"]}
    assert [cells[k]["verdict"] for k in ("s2-l2048", "s4-l2048")] == ["PASS", "PASS"]
    assert all(c["completed"] == c["max_num_seqs"] and c["kv_cache_tokens"] for c in cells.values())
    records = [json.loads((runs_dir / model / c["run_dir"].rsplit("/", 1)[-1] / "evidence.json").read_text())
               for c in cells.values()]
    ports = [r["command"]["argv"][r["command"]["argv"].index("--port") + 1] for r in records]
    assert len(set(ports)) == 2 and len({r["run_dir"] for r in records}) == 2
    assert "ran in the parallel set" in result.stdout
    assert not subprocess.run(["make", "-s", "hygiene"], env=env, cwd=REPO, capture_output=True).returncode
