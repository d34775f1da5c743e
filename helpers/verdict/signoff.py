"""Sign-off: ONE rule, read by the console, `make status`, `make matrix`, `make report` and
`make deliver`, so they say the same thing with the same exit code.

A run signs the bring-up off when it is a Stage B PASS with every layer and the real weights, of a
serve command that keeps the model's capabilities. A PASS only in a fallback mode (eager,
TORCHDYNAMO_DISABLE, XliteGraph instead of ACLGraph) signs off only when ACCEPT_FALLBACK names
that mode: it then becomes the documented command, and what it gives up (graph mode) is a FAIL
with its root cause. An isolation run that switches a capability off (text-only for a VL model)
and a run without weight files never sign off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import checkpoint as ckpt
from helpers import evidence as ev
from helpers.runs import Run, is_serving_run, latest

# The fallback modes an engineer may accept (ACCEPT_FALLBACK), and what each gives up.
ACCEPTABLE = {"eager": "aclgraph", "dynamo": "aclgraph", "xlite": "aclgraph"}
ISOLATION = ("text-only",)
ACCEPT_VARIABLE = "ACCEPT_FALLBACK"
NOT_FEASIBLE_FILE = "capacity-not-feasible.json"  # `make capacity CAPACITY_NOT_FEASIBLE=why` (workflow item 104)


def record_not_feasible(model_dir: Path, model: str, reason: str) -> Path:
    """Record why the capacity baseline cannot be run (a quality gate of sign-off)."""
    path = Path(model_dir) / NOT_FEASIBLE_FILE
    ev.atomic_write_json(path, {"model": model, "reason": reason, "recorded_at": ev.utc_iso()})
    return path


def capacity_state(model_dir: Path | None) -> dict[str, Any]:
    """The capacity quality gate: a capacity.json with a finished cell, else a recorded reason why not."""
    if model_dir is None:
        return {"status": "unchecked", "source": None, "reason": None}
    for name, status in (("capacity.json", "measured"), (NOT_FEASIBLE_FILE, "not-feasible")):
        try:
            data = ev.read_json(Path(model_dir) / name)
        except (OSError, ValueError):
            continue
        if status == "measured" and any(c.get("verdict") == "PASS" for c in data.get("cells") or []):
            return {"status": status, "source": str(Path(model_dir) / name), "reason": data.get("headline")}
        if status == "not-feasible" and data.get("reason"):
            return {"status": status, "source": str(Path(model_dir) / name), "reason": data["reason"]}
    return {"status": "missing", "source": None, "reason": None}


def mode_of(run: Run) -> str | None:
    """eager / dynamo / text-only / xlite when the run served in a fallback or isolation mode."""
    kind = run.fallback_kind
    if kind:
        return kind
    graph = run.data.get("graph") or {}
    if graph.get("mode") == "xlite" or any("xlite_graph_config" in arg for arg in run.argv):
        return "xlite"
    return None


def has_weight_files(run: Run) -> bool | None:
    """Whether the run's checkpoint holds weight files (None: the directory is gone, cannot tell)."""
    path = run.data.get("model_path")
    if not path or not Path(path).is_dir():
        return None
    try:
        inventory, _index = ckpt.take_inventory(Path(path), {})
    except (OSError, ckpt.CheckpointError):
        return None
    return bool(inventory.weight_files)


@dataclass
class SignOff:
    """The decision: `ok`, the run that signs off, its mode (None: the full-capability mode) and,
    when refused, one line saying what is missing and what to do."""

    ok: bool
    run: Run | None
    missing: str = ""
    mode: str | None = None
    accepted: str = ""
    gives_up: list[dict[str, Any]] = field(default_factory=list)
    capacity: dict[str, Any] = field(default_factory=dict)
    blocked_by: str = ""  # "capacity": the run signs off, the capacity quality gate is still open
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every Stage B PASS and why it does (not) count

    @property
    def headline(self) -> str:
        """One line for every console: the same words in status, matrix, report and deliver."""
        if not self.ok:
            return f"NOT signed off: {self.missing}"
        assert self.run is not None
        if self.mode:
            given = "; ".join(f"{g['feature']} FAIL: {g['root_cause'] or g['reason']}" for g in self.gives_up)
            return (f"signed off in the accepted fallback mode {self.mode} ({ACCEPT_VARIABLE}={self.accepted}): "
                    f"{self.run.run_dir}" + (f"; given up: {given}" if given else ""))
        return f"signed off: full-layer Stage B PASS with real weights, {self.run.run_dir}"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "run_dir": str(self.run.run_dir) if self.run else None,
                "step": self.run.step if self.run else None, "mode": self.mode, "accepted": self.accepted or None,
                "missing": self.missing or None, "gives_up": self.gives_up, "headline": self.headline,
                "capacity": self.capacity, "blocked_by": self.blocked_by or None, "candidates": self.candidates}


def _why_not(run: Run, accepted: str) -> str:
    """'' when the PASS counts, else why it does not."""
    mode = mode_of(run)
    if mode in ISOLATION:
        return f"{mode} isolates a capability (switches it off): an isolation run never signs off"
    if run.layers.reduced:
        return f"reduced layers ({run.layers.describe()})"
    if has_weight_files(run) is False:
        return "the checkpoint has no weight files: no real weights were served"
    if mode and mode != accepted:
        return (f"a fallback mode ({mode}): it signs off only when accepted explicitly "
                f"({ACCEPT_VARIABLE}={mode})")
    return ""


def given_up(runs: list[Run], mode: str) -> list[dict[str, Any]]:
    """What an accepted fallback gives up, with the root cause of the newest failing run that had it on."""
    feature = ACCEPTABLE.get(mode)
    if not feature:
        return []
    failed = latest(runs, lambda r: r.stage in ("a", "b") and r.verdict == "FAIL" and mode_of(r) is None
                    and not r.step.startswith("capacity"))
    cause = (failed.data.get("root_cause") or {}) if failed else {}
    return [{"feature": feature, "status": "FAIL", "run_dir": str(failed.run_dir) if failed else None,
             "line_no": cause.get("line_no"), "root_cause": cause.get("text"),
             "reason": (failed.data.get("reason") if failed else f"given up by the accepted fallback {mode}")}]


def decide(runs: list[Run], model: str, accepted: str = "", model_dir: Path | None = None) -> SignOff:
    """The sign-off of a model from its recorded runs (oldest first); `accepted` is ACCEPT_FALLBACK;
    with `model_dir`, the capacity quality gate too (a result, or a recorded reason why not)."""
    decision = _decide_run(runs, model, accepted)
    decision.capacity = capacity_state(model_dir)
    if decision.ok and decision.capacity["status"] == "missing":
        return SignOff(False, None, (f"sign-off refused for {model}: {decision.run.run_dir if decision.run else ''} "
                                     "passed, but there is no capacity result and no recorded reason why not; run "
                                     f"`make capacity MODEL={model}`, or record why it is not feasible with "
                                     f"`make capacity MODEL={model} CAPACITY_NOT_FEASIBLE=\"<why>\"`"),
                       capacity=decision.capacity, blocked_by="capacity", candidates=decision.candidates)
    return decision


def _decide_run(runs: list[Run], model: str, accepted: str = "") -> SignOff:
    accepted = (accepted or "").strip()
    passing = [r for r in runs if is_serving_run(r) and r.verdict == "PASS"]
    candidates = [{"run_dir": str(r.run_dir), "step": r.step, "mode": mode_of(r), "refused": _why_not(r, accepted)}
                  for r in passing]
    counted = [r for r, c in zip(passing, candidates) if not c["refused"]]
    full = latest(counted, lambda r: mode_of(r) is None)
    if full is not None:
        return SignOff(True, full, candidates=candidates)
    if counted:
        run = counted[-1]
        mode = mode_of(run) or ""
        return SignOff(True, run, mode=mode, accepted=accepted, gives_up=given_up(runs, mode), candidates=candidates)
    command = f"make stage-b MODEL={model}"
    if candidates:
        newest = candidates[-1]
        why = f"the Stage B PASS {newest['run_dir']} ({newest['step']}) does not count: {newest['refused']}"
        if newest["mode"] in ACCEPTABLE:
            why += f"; fix graph mode and run `{command}`, or accept the fallback with {ACCEPT_VARIABLE}={newest['mode']}"
        else:
            why += f"; run `{command}` with every layer, the real weights and every capability on"
    else:
        last = latest(runs, lambda r: r.stage == "b" and is_serving_run(r))
        why = (f"the latest Stage B run is {last.verdict} ({last.run_dir}); run `{command}` until it passes"
               if last else f"Stage B never ran (dummy evidence never signs off); run `{command}`")
    return SignOff(False, None, f"sign-off refused for {model}: no full-layer Stage B PASS that counts; {why}",
                   candidates=candidates)
