"""`make status MODEL=...`: where am I. The checklist of one model read from its recorded
evidence only (no server is started, nothing is rerun): each step with its verdict, age and run
directory; what is stale because the checkpoint (config.json, weight files), the implementation
roots (HEAD, dirty files) or the installed versions changed since that run recorded them;
whether sign-off is possible (a full-layer Stage B PASS that is still fresh: a run whose evidence
says `"layers": {"reduced": true}` never counts); and the next command to run.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from helpers import evidence as ev
from helpers import profiles, sourcetree
from helpers.errors import BringupError
from helpers.model import Model, checkpoint_fingerprint
from helpers.runs import Run, dig, first_seen_heads, read_runs
from helpers.settings import Settings
from helpers.triage import IN_PROCESS
from helpers.verdict.nextstep import finish
from helpers.verdict.signoff import decide

SCHEMA = 1
STEPS = ("context", "triage", "changes", "stage-a", "stage-b", "ep", "flashcomm1", "mtp", "ladder", "capacity",
         "accuracy", "report", "deliver")
FEATURE_STEPS = ("ep", "flashcomm1", "mtp")
PACKAGES = ("vllm", "vllm-ascend", "torch", "torch-npu", "transformers")
DONE = ("PASS", "NOT_APPLICABLE", "CHECKPOINT_MISSING", "FRAMEWORK_UNSUPPORTED", "DONE")


@dataclass
class Step:
    step: str
    verdict: str = "NOT_RUN"
    when: str | None = None
    run_dir: str | None = None
    stale: list[str] = field(default_factory=list)
    note: str = ""
    age: str = ""

    @property
    def fresh_done(self) -> bool:
        return self.verdict in DONE and not self.stale


@dataclass
class Now:
    """The box of today, as the recorded runs are compared with it."""

    model_path: str | None
    fingerprint: dict[str, Any] | None
    config_mtime: float | None
    weights_mtime: float | None
    roots: dict[str, dict[str, Any]]
    versions: dict[str, str | None]
    versions_note: str = ""


def _mtime(paths: list[Path]) -> float | None:
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return max(times) if times else None


def observe(settings: Settings, model: Model, backend: str) -> Now:
    roots = sourcetree.implementation_roots(settings)
    pending = {name: sourcetree.start_status(path) if path else None for name, path in roots.items()}
    versions: dict[str, str | None] = {}
    note = ""
    try:
        versions = profiles.load(backend).facts_box().versions(PACKAGES)
    except BringupError as exc:
        note = f"versions not compared: {exc.line()}"
    now_roots = {}
    for name, path in roots.items():
        if path is not None:
            info = sourcetree.read_status(path, pending[name])
            now_roots[name] = {"path": str(path), "head": info.head, "fingerprint": info.fingerprint, "git": info.git,
                               "dirty": bool(info.dirty)}
    path = model.path
    return Now(str(path) if path else None, checkpoint_fingerprint(path) if path else None,
               _mtime([path / "config.json"]) if path else None,
               _mtime([p for pattern in ("*.safetensors", "*.bin", "*.index.json") for p in path.glob(pattern)])
               if path else None, now_roots, versions, note)


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def age_text(stamp: str | None, now: float | None = None) -> str:
    moment = _epoch(stamp)
    if moment is None:
        return ""
    seconds = max(0.0, (now or time.time()) - moment)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def stale_reasons(now: Now, *, when: str | None, context: dict[str, Any] | None, model_path: str | None,
                  versions: dict[str, Any] | None, uses_weights: bool = True) -> list[str]:
    """Why a record made at `when` no longer describes today's checkpoint, roots or versions."""
    reasons = []
    if model_path and now.model_path and model_path != now.model_path:
        reasons.append(f"recorded for {model_path}, MODEL is now {now.model_path}")
    recorded = dig(context, "model", "fingerprint") if context else None
    if recorded and now.fingerprint:
        if recorded.get("config_sha256") != now.fingerprint.get("config_sha256"):
            reasons.append("config.json changed since this run")
        if uses_weights and recorded.get("weights_sha256") != now.fingerprint.get("weights_sha256"):
            reasons.append("the weight files changed since this run")
    else:  # an older record without a fingerprint: modification times, against a stamp in whole seconds
        moment = _epoch(when)
        if moment is not None and now.config_mtime and now.config_mtime >= moment + 1:
            reasons.append("config.json changed after this run")
        if moment is not None and uses_weights and now.weights_mtime and now.weights_mtime >= moment + 1:
            reasons.append("the weight files changed after this run")
    for name, root in ((context or {}).get("roots") or {}).items():
        today = now.roots.get(name)
        if not root.get("git") or not today or today["path"] != root.get("path") or not today["git"]:
            continue
        if root.get("head") != today["head"]:
            reasons.append(f"{sourcetree.ROOT_SETTINGS.get(name, name)} HEAD moved ({str(root.get('head'))[:8]} -> "
                           f"{str(today['head'])[:8]})")
        elif root.get("fingerprint") != today["fingerprint"]:
            reasons.append(f"{sourcetree.ROOT_SETTINGS.get(name, name)} has other uncommitted changes than at this run")
    for package, version in (versions or {}).items():
        current = now.versions.get(package)
        if version and current and version != current:
            reasons.append(f"{package} is now {current} (the run had {version})")
    return reasons


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = ev.read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def reduced(run: Run) -> bool:
    return bool(dig(run.data, "layers", "reduced"))


def run_step(name: str, run: Run | None, now: Now) -> Step:
    if run is None:
        return Step(name)
    data = run.data
    when = data.get("finished_at") or data.get("started_at")
    step = Step(name, run.verdict, when, str(run.run_dir), stale_reasons(
        now, when=data.get("started_at"), context=data.get("context"), model_path=data.get("model_path"),
        versions=data.get("versions"), uses_weights=run.stage != "a"))
    if reduced(run):
        step.note = "reduced layers: never signs off"
    elif run.verdict == "FAIL":
        step.note = f"[{data.get('category')}] {str(data.get('reason') or '')[:120]}"
    return step


def file_steps(model_runs: Path, now: Now) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    record = _read(model_runs / "context.json")
    steps["context"] = Step("context") if record is None else Step(
        "context", record.get("verdict") or "PASS", record.get("generated_at"), str(model_runs / "context.json"),
        note="; ".join(record.get("problems") or [])[:160])
    record = _read(model_runs / "triage.json")
    if record is not None:
        # the roots do not stale a triage: what changed there is for `make changes` to check
        steps["triage"] = Step("triage", "FAIL" if record.get("errors") else "PASS", record.get("created_utc"),
                               str(model_runs / "triage.json"), stale_reasons(
                                   now, when=record.get("created_utc"),
                                   context={"model": dig(record, "context", "model")},
                                   model_path=dig(record, "model", "path"), versions=record.get("versions"))
                               + (["written in-process by a stage or gate run, without vLLM's registry"]
                                  if dig(record, "registry", "method") == IN_PROCESS else []),
                               "; ".join(record.get("errors") or [])[:160])
    record = _read(model_runs / "changes.json")
    if record is not None:
        context = {"roots": {name: {**root, "git": bool(root.get("head"))} for name, root in
                             (record.get("roots") or {}).items()}}
        steps["changes"] = Step("changes", record.get("verdict") or "?", record.get("generated_at"),
                                str(model_runs / "changes.json"),
                                stale_reasons(now, when=record.get("generated_at"), context=context, model_path=None,
                                              versions=None),
                                "; ".join(record.get("problems") or [])[:160])
    record = _read(model_runs / "latest-ladder" / "ladder.json")
    if record is not None:
        isolated = record.get("isolated_by") or {}
        steps["ladder"] = Step("ladder", "PASS" if record.get("fixed_by") else "FAIL",
                               record.get("finished_at") or record.get("started_at"), record.get("run_dir"),
                               note=f"fixed by {record['fixed_by']}" if record.get("fixed_by") else
                               f"isolated to {isolated['isolates']} by {isolated['rung']} (not a fix)" if isolated
                               else "no rung passed")
    record = _read(model_runs / "capacity.json")
    if record is not None:
        cells = record.get("cells") or [{}]
        when = record.get("generated_at")
        # a cell's own evidence records the context and versions it ran with: roots and versions stale it too
        cell = next((_read(Path(c["run_dir"]) / "evidence.json") for c in cells if c.get("run_dir")), None) or {}
        steps["capacity"] = Step("capacity", cells[0].get("verdict") or "?", when, str(model_runs / "capacity.json"),
                                 stale_reasons(now, when=cell.get("started_at") or when, context=cell.get("context"),
                                               model_path=record.get("model_path") or cell.get("model_path"),
                                               versions=cell.get("versions")), str(record.get("headline") or "")[:120])
    record = _read(model_runs / "latest-accuracy" / "accuracy.json")
    if record is not None:
        when = record.get("finished_at") or record.get("started_at")
        steps["accuracy"] = Step("accuracy", record.get("verdict") or "?", when, record.get("run_dir"),
                                 stale_reasons(now, when=record.get("started_at"), context=record.get("context"),
                                               model_path=record.get("model_path"), versions=None))
    deliverables = model_runs / "deliverables" / "deliverables.json"
    record = _read(deliverables)
    if record is not None:
        rendered_at = deliverables.stat().st_mtime
        rendered = ev.utc_iso(rendered_at)
        newer = [p.parent.name for p in model_runs.glob("*/evidence.json") if p.stat().st_mtime > rendered_at]
        steps["report"] = Step("report", "DONE", rendered, str(deliverables.parent),
                               [f"evidence newer than the report ({newer[-1]})"] if newer else [],
                               "" if record.get("stage_b_signed_off") else "rendered without Stage B sign-off")
        commit = record.get("commit")
        if commit:
            commit_hash = commit.get("hash") if isinstance(commit, dict) else str(commit)
            steps["deliver"] = Step("deliver", "DONE", (commit.get("at") if isinstance(commit, dict) else None)
                                    or rendered, str(deliverables.parent), note=f"commit {commit_hash}")
    return steps


# --- the checklist ----------------------------------------------------------------------------

def signoff(runs: list[Run], now: Now, model: str = "", accepted: str = "",
            model_dir: Path | None = None) -> dict[str, Any]:
    """The one sign-off rule (helpers/verdict/signoff.py), and the signing run must still be fresh."""
    decision = decide(runs, model, accepted, model_dir)
    record = {"possible": False, "run_dir": None, "step": None, "reason": decision.missing, "mode": decision.mode,
              "gives_up": decision.gives_up, "capacity": decision.capacity, "blocked_by": decision.blocked_by}
    if decision.run is None:
        return record
    run = decision.run
    record.update(run_dir=str(run.run_dir), step=run.step)
    stale = run_step(run.step, run, now).stale
    if stale:
        record["reason"] = (f"the full-layer Stage B PASS ({run.step}, {run.data.get('started_at')}) is stale: "
                            + "; ".join(stale))
        return record
    record.update(possible=True, reason=decision.headline)
    return record


def next_command(steps: dict[str, Step], sign: dict[str, Any], model_arg: str, roots_changed: bool,
                 runs: list[Run], settings: Settings) -> dict[str, str]:
    arg = f"MODEL={shlex.quote(model_arg)}"

    def failed_next(step: Step) -> str:
        """The diagnosis' own next command of a failed run (recorded in its evidence)."""
        run = next((r for r in reversed(runs) if str(r.run_dir) == step.run_dir), None)
        return str(dig(run.data, "diagnosis", "next_command", default="") or "") if run else ""

    triage = steps["triage"]
    if not triage.fresh_done:
        why = ("; ".join(triage.stale) if triage.stale else triage.note if triage.verdict == "FAIL" else "no triage.json")
        return {"command": f"make triage {arg}", "why": why or "triage failed"}
    changes = steps["changes"]
    if (roots_changed or changes.verdict != "NOT_RUN") and not changes.fresh_done:
        why = "; ".join(changes.stale) or changes.note or "the implementation roots have changes nobody checked"
        return {"command": f"make changes {arg}", "why": why}
    stage_a, stage_b = steps["stage-a"], steps["stage-b"]
    only_capacity = sign.get("blocked_by") == "capacity"
    if not sign["possible"] and not only_capacity:  # a missing capacity result is reached below, in order
        if stage_b.verdict == "FAIL" and not stage_b.stale:
            command = failed_next(stage_b) or f"make ladder {arg}"
            return {"command": command, "why": f"Stage B failed: {stage_b.note}"}
        if not stage_a.fresh_done and stage_b.verdict == "NOT_RUN":
            if stage_a.verdict == "FAIL" and not stage_a.stale:
                return {"command": failed_next(stage_a) or f"make ladder {arg} STAGE=a",
                        "why": f"Stage A failed: {stage_a.note}"}
            return {"command": f"make stage-a {arg}", "why": "the fast gate with dummy weights first"}
        return {"command": f"make stage-b {arg}", "why": sign["reason"]}
    for name in FEATURE_STEPS:
        step = steps[name]
        if step.verdict == "NOT_RUN" or step.stale:
            return {"command": f"make {name} {arg}",
                    "why": "; ".join(step.stale) or f"feature {name} has no evidence yet"}
    for name, why in (("capacity", "the 128k x 16 baseline"), ("accuracy", "the e2e YAML needs accuracy.json"),
                      ("report", "the deliverables")):
        step = steps[name]
        if not step.fresh_done:
            return {"command": f"make {name} {arg}", "why": "; ".join(step.stale) or step.note or why}
    if steps["deliver"].verdict == "NOT_RUN":
        repo = f" DELIVERY_REPO={shlex.quote(str(settings.delivery_repo))}" if settings.delivery_repo else ""
        return {"command": f"make deliver {arg}{repo}", "why": "one signed commit in the delivery repo"}
    return {"command": "", "why": "every step is done and fresh: nothing left to run"}


def collect(settings: Settings, model: Model) -> dict[str, Any]:
    runs = read_runs(model.runs_dir)
    backend = settings.backend or next((r.data.get("backend") for r in reversed(runs) if r.data.get("backend")), "")
    now = observe(settings, model, backend)
    steps = {name: Step(name) for name in STEPS}
    steps.update(file_steps(model.runs_dir, now))
    for name in ("stage-a", "stage-b") + FEATURE_STEPS:
        run = next((r for r in reversed(runs) if r.step == name), None)
        steps[name] = run_step(name, run, now)
    clock = time.time()
    for step in steps.values():
        step.age = age_text(step.when, clock)
    sign = signoff(runs, now, model.name, settings.accept_fallback, model.runs_dir)
    seen = first_seen_heads(model.runs_dir)
    # code changed in a root since this model's first run (or uncommitted there): `make changes`
    roots_changed = any(root["git"] and (root["dirty"] or root["head"] != seen.get(root["path"], root["head"]))
                        for root in now.roots.values())
    upcoming = next_command(steps, sign, settings.model or model.name, roots_changed, runs, settings)
    upcoming["command"] = finish(upcoming["command"], given=settings.given, stage="b")  # the user's variables along
    return {"schema": SCHEMA, "generated_at": ev.utc_iso(), "model": model.name, "runs_dir": str(model.runs_dir),
            "steps": [asdict(s) for s in steps.values()], "signoff": sign, "next": upcoming,
            "now": {"model_path": now.model_path, "checkpoint": now.fingerprint, "roots": now.roots,
                    "versions": now.versions, "versions_note": now.versions_note}}


def render_table(record: dict[str, Any]) -> str:
    lines = [f"status {record['model']} ({record['runs_dir']})",
             f"  {'step':11s} {'verdict':18s} {'age':6s} run"]
    for step in record["steps"]:
        where = Path(step["run_dir"]).name if step["run_dir"] else "-"
        lines.append(f"  {step['step']:11s} {step['verdict']:18s} {step['age'] or '-':6s} {where}"
                     + (f"  {step['note']}" if step["note"] else ""))
        if step["stale"]:  # one line per step, however many inputs changed
            lines.append(f"  {'':11s} STALE: {'; '.join(step['stale'])}")
    sign = record["signoff"]
    lines.append(f"sign-off: {'possible' if sign['possible'] else 'not yet'}: {sign['reason']}")
    if record["now"]["versions_note"]:
        lines.append(f"note: {record['now']['versions_note']}")
    upcoming = record["next"]
    lines.append(f"下一步 next: {upcoming['command'] or '(none)'}  # {upcoming['why']}")
    return "\n".join(lines)
