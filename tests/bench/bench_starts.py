"""Benchmark: server starts and wall time of a bring-up, on replay scenarios played at their
recorded pace (REPLAY_SPEED=1 for every run, old order and new alike).

  1. `make all-features` on a MoE scenario where everything works (DeepSeek-V3 on vllm-ascend
     0.23: EP, flashcomm1, MTP all apply): the old order (stage-a, stage-b, ep, flashcomm1, mtp,
     each its own start) against the feature-first one. Target: 5 starts down to 3, wall time in
     proportion.
  2. Starts when exactly one of k features breaks the run (MTP, k = 2): at most 3 + ceil(log2 k) + 1
     for the culprit to be named.
  3. `make capacity SWEEP="16 32 64"` and the isolation probes of (2) at TP 4 on an 8-NPU box:
     two free groups against one (PARALLEL=1). Target: wall-time ratio <= 0.6. Played at 1/20 of
     the scenarios' pace (both sides), at MAX_MODEL_LEN=4096: the scenarios compress a start to
     seconds, and at that pace the 2-core machine's own work (a Python process per run, importing
     transformers, tokenizing 64 prompts of 40k tokens) would be measured instead of the starts,
     which on a real box take minutes. Rounds bound it: 3 cells on 2 groups take 2 rounds, and
     Stage A / Stage B beside flashcomm1 / base beside the first half take 3 rounds of 5 starts.
  4. capacity's baseline cell right after `make serve`: starts added (target: none).
Run: make bench.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import base_env, free_port, linked_copy, run_make, tiny_shaped  # noqa: E402
from helpers import model as model_module  # noqa: E402
from helpers import serve, settings, triage  # noqa: E402

SCENARIO = "v0.23-deepseek-v3"
SLOW = "0.05"


class Box:
    def __init__(self, root: Path) -> None:
        self.root, self.runs = root, root / "runs"
        self.runs.mkdir(parents=True)
        self.shape = tiny_shaped(root / "shapes" / "deepseek-v3", "deepseek-v3")
        loaded = settings.load({"RUNS_DIR": str(self.runs), "MODEL": str(self.shape), "BACKEND": "cpu"})
        triage.triage(loaded, model_module.resolve(loaded), registry=False, backend="cpu")  # coverage cache
        self.count = 0

    def model(self) -> Path:
        self.count += 1
        return linked_copy(self.shape, self.root / "models" / f"DeepSeek-V3-{self.count}")

    def make(self, model: Path, targets: list[str], scenario: str = SCENARIO, *variables: str,
             port: int | None = None, keep: bool = False, speed: str = "1") -> tuple[int, float]:
        """(server starts, wall seconds) of these make targets in a row on `model`."""
        env = base_env(self.runs, BACKEND="replay", REPLAY_SCENARIO=scenario, REPLAY_SPEED=speed,
                       PORT=str(port or free_port()), READY_TIMEOUT="300")
        env.pop("PYTHONPATH")
        before = starts(self.runs, model)
        t0 = time.perf_counter()
        for target in targets:
            run_make(target, env, f"MODEL={model}", *variables, timeout=1200)
        seconds = time.perf_counter() - t0
        if not keep:
            serve.stop_recorded(self.runs, say=lambda _line: None)
        return starts(self.runs, model) - before, seconds


def starts(runs: Path, model: Path) -> int:
    return sum(1 for p in (runs / model.name).glob("*/serve.log") if not p.parent.is_symlink())


def breaking_scenario(root: Path) -> Path:
    """DeepSeek-V3's recording, its worker-start failure of an unknown speculative method (there for
    mlp_speculator) here for `"method":"mtp"`: exactly one of the two features breaks the start."""
    data = yaml.safe_load((REPO / "helpers/replay/scenarios" / f"{SCENARIO}.yaml").read_text())
    next(b for b in data["startup"] if b["id"] == "unknown-spec-method")["when"] = {
        "flag_json": {"flag": "--speculative-config", "key": "method", "in": ["mtp"]}}
    data["name"] = "v0.23-deepseek-v3-mtp-breaks"
    path = root / f"{data['name']}.yaml"
    path.write_text(f"# Sources: helpers/replay/scenarios/{SCENARIO}.yaml\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-starts-") as tmp:
        box = Box(Path(tmp))
        old = box.make(box.model(), ["stage-a", "stage-b", "ep", "flashcomm1", "mtp", "matrix"])
        new = box.make(box.model(), ["all-features"])
        print(f"all-features, everything works: old order {old[0]} starts {old[1]:.1f} s | feature-first "
              f"{new[0]} starts {new[1]:.1f} s (wall ratio {new[1] / old[1]:.2f}; target 5 -> 3 starts)")
        breaks = breaking_scenario(Path(tmp))
        k = 2
        bound = 3 + math.ceil(math.log2(k)) + 1
        broken = box.make(box.model(), ["all-features"], str(breaks))
        print(f"all-features, one of k={k} features breaks: {broken[0]} starts to name the culprit "
              f"(bound 3 + ceil(log2 k) + 1 = {bound}) {broken[1]:.1f} s")
        sequential = parallel = 0.0
        for label, extra in (("one group", ["PARALLEL=1"]), ("two groups", [])):
            cap = box.make(box.model(), ["capacity"], SCENARIO, "SWEEP=16 32 64", "TP=4", "MAX_MODEL_LEN=4096",
                           *extra, speed=SLOW)
            probes = box.make(box.model(), ["all-features"], str(breaks), "TP=4", *extra, speed=SLOW)
            total = cap[1] + probes[1]
            print(f"capacity SWEEP=\"16 32 64\" + isolation probes at TP 4 on 8 NPUs (pace x{SLOW}), {label}: "
                  f"{cap[0]} + {probes[0]} starts, {cap[1]:.1f} + {probes[1]:.1f} = {total:.1f} s")
            sequential, parallel = (total, parallel) if label == "one group" else (sequential, total)
        print(f"  two groups against one: wall-time ratio {parallel / sequential:.2f} (target <= 0.6)")
        model = box.model()
        port = free_port()
        served = box.make(model, ["serve"], port=port, keep=True)
        env_runs = box.make(model, ["capacity", "hygiene"], port=port)
        print(f"capacity's baseline cell right after make serve: {env_runs[0]} start(s) added "
              f"(make serve: {served[0]}; target: none added)")


if __name__ == "__main__":
    main()
