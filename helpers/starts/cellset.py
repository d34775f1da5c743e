"""Capacity cells at once: the sweep's unfinished cells are independent starts, so on a box with
free NPUs for more than one copy (or PARALLEL=2 on cpu) each runs as its own `capacity
--cells-only` child on its own slot (groups.py); each writes its cell.json as a sequential sweep
would, and the sweep then assembles capacity.json from them (and does what depends on a result,
the practical-length search, one start at a time). A baseline that `make serve`'s live server may
serve is left to the sweep itself (it shares that server instead of starting one)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import evidence as ev
from helpers.npus import parallel_size
from helpers.stage import StageRequest, StageRun
from helpers.starts import reuse
from helpers.starts.groups import plan_slots
from helpers.starts.runset import Job, RunSet

if TYPE_CHECKING:
    from helpers.capacity import CapacitySweep


def run_at_once(sweep: "CapacitySweep", pending: list[int]) -> tuple[dict[str, dict[str, Any]], bool]:
    """(finished cells by key, interrupted) of the pending max-num-seqs cells run at once; ({}, False)
    when one slot is all there is (the sweep then runs them one by one, as before)."""
    from helpers.capacity import FINISHED

    settings = sweep.settings
    live = reuse.live_server(settings.runs_dir, settings.port)
    if live is not None and pending and pending[0] == sweep.sweep[0]:
        pending = pending[1:]  # the baseline may be served by the live server: the sweep decides
    if len(pending) < 2:
        return {}, False
    plan = StageRun(settings, sweep.model, StageRequest(step="capacity", stage=settings.stage),
                    out=lambda _line: None).plan
    sizes = parallel_size(plan.argv)
    slots = plan_slots(settings, sweep.profile, sizes["tp"] * sizes["pp"] * sizes["dp"], len(pending),
                       frozenset({settings.port}) if live is not None else frozenset())
    if not slots.parallel:
        return {}, False
    # a cell's load is max-num-seqs concurrent long prompts: the widest cell takes longest
    jobs = [Job(f"capacity cell max-num-seqs {n}", ["capacity", "--cells-only"], env={"SWEEP": str(n)}, weight=n)
            for n in pending]
    outcomes = RunSet(slots, runs_dir=settings.runs_dir, model_name=sweep.model_name, out=sweep.out).run(jobs)
    done: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        if not outcome.run_dir:
            continue
        try:
            cell = ev.read_json(Path(outcome.run_dir) / "cell.json")
        except (OSError, ValueError):
            continue
        if cell.get("verdict") in FINISHED and cell.get("signature") == sweep.signature:
            done[cell["key"]] = cell
    interrupted = any(o.code is None or o.verdict == "INTERRUPTED" for o in outcomes)
    return done, interrupted
