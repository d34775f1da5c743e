"""Run a set of helper commands (`python -m helpers stage|gate|capacity ...`), each a child
process with its own slot (groups.Slot: NPU group, PORT, HCCL port range) and its own run
directory. One slot: one after another, output as it comes (as before). Several: at once, one
progress line per run as it starts and ends, then each run's own output in the set's order.

Ctrl-C (or SIGTERM/SIGHUP) reaches every child - from the terminal, and forwarded here for a
signal only this process got; each child stops its own server and writes its evidence
(INTERRUPTED); no queued run is started; the set ends with exit 130. The set's record
(parallel.json: slots, runs, verdicts) is written beside the runs' own directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from helpers import evidence as ev
from helpers.errors import EXIT_INTERRUPTED
from helpers.settings import REPO_ROOT
from helpers.starts.groups import Slot, SlotPlan

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Job:
    label: str               # what a person reads: "stage-b (ep, mtp)", "flashcomm1"
    args: list[str]          # helper command and options
    env: dict[str, str] = field(default_factory=dict)
    # how long it runs against the others of its set: the longest start first, so that with fewer
    # slots than runs the short ones fill in behind it and none is left to run alone at the end
    weight: float = 0.0


@dataclass
class Outcome:
    job: Job
    slot: Slot
    code: int | None = None
    result: dict[str, Any] = field(default_factory=dict)   # what the child wrote to --result
    seconds: float = 0.0
    output: Path | None = None

    @property
    def verdict(self) -> str:
        if self.code == EXIT_INTERRUPTED:
            return "INTERRUPTED"
        return str(self.result.get("verdict") or ("FAIL" if self.code else "PASS"))

    @property
    def run_dir(self) -> str | None:
        return self.result.get("run_dir")

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.job.label, "args": self.job.args, "slot": self.slot.to_dict(), "exit_code": self.code,
                "verdict": self.verdict, "run_dir": self.run_dir, "seconds": round(self.seconds, 3),
                "output": str(self.output) if self.output else None}


def _child_env(slot: Slot, job: Job) -> dict[str, str]:
    env = dict(os.environ)
    # the helper's own PYTHONPATH (scripts/lib.sh); the servers it starts get the box's back
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(slot.env())
    env.update(job.env)
    return env


class RunSet:
    def __init__(self, plan: SlotPlan, *, runs_dir: Path, model_name: str,
                 out: Callable[[str], None] | None = None) -> None:
        self.plan = plan
        self.runs_dir = runs_dir
        self.model_name = model_name
        self.out = out or (lambda line: print(line, flush=True))
        self.interrupted: int | None = None
        self.live: dict[int, subprocess.Popen] = {}

    def _on_signal(self, signum, _frame) -> None:
        if self.interrupted is None:
            self.interrupted = signum
            self.out(f"[set] {signal.Signals(signum).name}: stopping every run of the set (each keeps its evidence)")
        for process in list(self.live.values()):
            try:
                os.kill(process.pid, signum)
            except ProcessLookupError:
                pass

    def _start(self, job: Job, slot: Slot, result: Path, output: Path | None) -> subprocess.Popen:
        argv = [sys.executable, "-m", "helpers", *job.args, "--result", str(result)]
        sink = output.open("ab") if output else None
        try:
            return subprocess.Popen(argv, env=_child_env(slot, job), stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=subprocess.STDOUT if sink else None)
        finally:
            if sink:
                sink.close()

    def run(self, jobs: list[Job]) -> list[Outcome]:
        """Run `jobs`; outcomes in the jobs' order (a job never started has code None)."""
        if not jobs:
            return []
        parallel = self.plan.parallel and len(jobs) > 1
        set_dir = ev.new_run_dir(self.runs_dir, self.model_name, "parallel") if parallel else None
        with tempfile.TemporaryDirectory(prefix="bringup-set-") as scratch:
            return self._run(jobs, parallel, set_dir, Path(scratch))

    def _run(self, jobs: list[Job], parallel: bool, set_dir: Path | None, work: Path) -> list[Outcome]:
        outcomes = [Outcome(job, self.plan.slots[0]) for job in jobs]
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)
        if parallel:
            self.out(f"[set] {len(jobs)} runs, {len(self.plan.slots)} at once: {self.plan.why}")
        started: dict[int, tuple[int, float, Path]] = {}
        free = list(self.plan.slots)
        queue = sorted(range(len(jobs)), key=lambda i: -jobs[i].weight)  # stable: equal weights keep their order
        try:
            while (queue and self.interrupted is None) or self.live:
                while queue and free and self.interrupted is None:
                    index, slot = queue.pop(0), free.pop(0)
                    outcome = outcomes[index]
                    outcome.slot = slot
                    result = work / f"result-{os.getpid()}-{index}.json"
                    result.unlink(missing_ok=True)
                    outcome.output = (set_dir / f"{index + 1}-{ev.safe_name(jobs[index].label)}.out") if set_dir else None
                    if parallel:
                        self.out(f"[set] started {jobs[index].label} on {slot.describe()}")
                    self.live[index] = self._start(jobs[index], slot, result, outcome.output)
                    started[index] = (slot.index, time.monotonic(), result)
                for index, process in list(self.live.items()):
                    if process.poll() is None:
                        continue
                    del self.live[index]
                    slot_index, t0, result = started[index]
                    outcome = outcomes[index]
                    outcome.code, outcome.seconds = process.returncode, time.monotonic() - t0
                    outcome.result = _read_result(result)
                    free.append(outcome.slot)
                    free.sort(key=lambda s: s.index)
                    if parallel:
                        self.out(f"[set] {outcome.verdict} {jobs[index].label} ({outcome.seconds:.1f} s)")
                time.sleep(0.1 if self.live else 0)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if parallel:
            for outcome in outcomes:
                if outcome.output and outcome.output.is_file():
                    self.out(f"== {outcome.job.label} ({outcome.slot.describe()})")
                    self.out(outcome.output.read_text(encoding="utf-8", errors="replace").rstrip("\n"))
            ev.atomic_write_json(set_dir / "parallel.json", {  # type: ignore[operator]
                "schema": 1, "why": self.plan.why, "slots": [s.to_dict() for s in self.plan.slots],
                "interrupted": self.interrupted is not None, "finished_at": ev.utc_iso(),
                "runs": [o.to_dict() for o in outcomes]})
        return outcomes


def write_result(path: Path | None, record: dict[str, Any]) -> None:
    """What a child of a set tells the set (its `--result` file): verdict and run directory."""
    if path is not None:
        ev.atomic_write_json(path, {"verdict": record.get("verdict"), "run_dir": record.get("run_dir"),
                                    "category": record.get("category")})


def _read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    path.unlink(missing_ok=True)
    return data if isinstance(data, dict) else {}
