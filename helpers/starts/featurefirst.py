"""`make all-features` feature-first: Stage A (the fast gate), then one Stage B with every
applicable feature of the default set on, each feature's cell decided from its own evidence line
in that run's log (never from the run passing), flashcomm1 as its own check beside it. Only when
that Stage B fails, or a feature shows no evidence, does it isolate: a failed run is bisected
over its feature set (the base first, then halves; one start per probe) until the culprit feature
(or the base command) is named; a feature without evidence runs its own gate (`make ep` ...).

A fresh PASS of the same command is reused (reuse.py); after a Stage A that never became ready,
no Stage B (or flashcomm1) is started: it would start the same command and fail the same way.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any, Callable

from helpers import evidence as ev
from helpers import gates, matrix, profiles, status
from helpers.catalog import load_catalog
from helpers.errors import EXIT_FAIL, EXIT_INTERRUPTED
from helpers.features import load_specs
from helpers.model import Model
from helpers.npus import parallel_size
from helpers.plan import Variant
from helpers.settings import Settings
from helpers.stage import StageRequest, StageRun
from helpers.starts import reuse
from helpers.starts.groups import Slot, SlotPlan, load_plan, plan_slots
from helpers.starts.runset import Job, Outcome, RunSet
from helpers.triage import current_facts
from helpers.verdict import proof

Out = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


# --- the feature-first Stage B run -------------------------------------------------------------

def decisions(settings: Settings, model: Model, names: list[str]) -> dict[str, gates.GateDecision]:
    settings.backend = settings.backend or profiles.detect_backend()
    facts = current_facts(settings, model, settings.backend, _quiet)
    ctx = gates.GateContext(facts=facts, runs_dir=model.runs_dir, user_tp=settings.tp)
    specs = load_specs()
    return {name: gates.decide(name, ctx, specs) for name in names}


def _flag_groups(flags: list[str]) -> list[list[str]]:
    groups: list[list[str]] = []
    for arg in flags:
        if arg.startswith("--") or not groups:
            groups.append([])
        groups[-1].append(arg)
    return groups


def combined_variant(on: dict[str, gates.GateDecision]) -> Variant:
    """The features' switches together (a flag two features need, e.g. EP, once)."""
    groups: list[list[str]] = []
    env: dict[str, str] = {}
    for decision in on.values():
        assert decision.variant is not None
        groups += [g for g in _flag_groups(decision.variant.flags) if g not in groups]
        env.update(decision.variant.env)
    return Variant(name="+".join(on) or "base", flags=[a for g in groups for a in g], env=env)


def decide_each(on: dict[str, gates.GateDecision], record: dict[str, Any], log: Path) -> dict[str, Any]:
    """Each feature's cell from this run: PASS only with the feature's own evidence line; a run
    that failed decides only a feature whose own refusal line it shows (the rest: isolation)."""
    specs = load_specs()
    scan = record.get("log_evidence") or {}
    lines = (record.get("log_scan") or {}).get("evidence_lines") or {}
    env = (record.get("command") or {}).get("env") or {}
    decided: dict[str, Any] = {}
    for name, decision in on.items():
        spec = specs[name]
        if record.get("verdict") == "PASS":
            found, why = proof.feature_evidence(spec, scan, lines, log, env, (decision.variant or Variant()).env)
            if found is None:
                decided[name] = {"verdict": "FAIL", "category": "feature-not-active", "reason": why}
                continue
            reason = f"{name}: its own line in the feature-first Stage B (serve.log line {found.get('line_no')})"
            if found["level"] == "accepted":
                reason = f"{name} accepted, no runtime evidence: {str(found['line']).strip()[:200]}"
            decided[name] = {"verdict": "PASS", "reason": reason, **found}
        elif record.get("verdict") == "FAIL":
            catalog = load_catalog()
            refusal = proof.find_in_log(log, [catalog.by_id(sig).pattern for sig in proof.Proof.of(spec).failures])
            if refusal:
                decided[name] = {"verdict": "FAIL", "category": record.get("category"), "line": refusal[0],
                                 "line_no": refusal[1],
                                 "reason": f"{name} refused (serve.log line {refusal[1]}): {refusal[0].strip()[:200]}"}
    return decided


def feature_run(settings: Settings, model: Model, names: list[str], step: str = "stage-b") -> StageRun:
    """A Stage B with these gates' switches on together; its evidence says, per feature, which
    line decided it (`decides`) and which features were on (`features_on`)."""
    on = {n: d for n, d in decisions(settings, model, names).items() if d.verdict is None}
    request = StageRequest(step=step, stage="b", variant=combined_variant(on), make_target="all-features")
    run = StageRun(settings, model, request)

    def check(stage_run: StageRun) -> None:
        assert stage_run.run_dir is not None
        stage_run.record["features_on"] = list(on)
        stage_run.record["decides"] = decide_each(on, stage_run.record, stage_run.run_dir / "serve.log")

    run.post_check = check
    return run


# --- make all-features -------------------------------------------------------------------------

class AllFeatures:
    def __init__(self, settings: Settings, model: Model, out: Out | None = None) -> None:
        self.settings = settings
        self.model = model
        self.out = out or (lambda line: print(line, flush=True))
        settings.backend = settings.backend or profiles.detect_backend()
        self.profile = profiles.load(settings.backend)
        self.rules = load_plan()
        self.now = status.observe(settings, model, settings.backend)
        self.starts = 0
        self.interrupted = False
        self.model_arg = shlex.quote(model.requested or model.name)

    # ------------------------------------------------------------ running sets
    def _world(self) -> int:
        plan = StageRun(self.settings, self.model, StageRequest(step="stage-b", stage="b"), out=_quiet).plan
        sizes = parallel_size(plan.argv)
        return sizes["tp"] * sizes["pp"] * sizes["dp"]

    def _run(self, jobs: list[Job]) -> list[Outcome]:
        slots = plan_slots(self.settings, self.profile, self._world(), len(jobs)) if len(jobs) > 1 else \
            SlotPlan([Slot(0, self.settings.port)], "one run")
        if not slots.parallel:
            outcomes = []
            for job in jobs:
                if self.interrupted:
                    break
                self.out(f"== {job.label}")
                outcomes += RunSet(slots, runs_dir=self.settings.runs_dir, model_name=self.model.name,
                                   out=self.out).run([job])
                self.interrupted = self.interrupted or outcomes[-1].code == EXIT_INTERRUPTED
        else:
            outcomes = RunSet(slots, runs_dir=self.settings.runs_dir, model_name=self.model.name,
                              out=self.out).run(jobs)
        self.starts += sum(1 for o in outcomes if o.code is not None and _started(o))
        self.interrupted = self.interrupted or any(o.code == EXIT_INTERRUPTED or o.code is None for o in outcomes)
        return outcomes

    def _reused(self, step: str, plan_run: StageRun) -> dict[str, Any] | None:
        if self.settings.force:
            return None
        found = reuse.fresh_pass(self.model.runs_dir, step, plan_run.plan, self.now)
        if found:
            self.out(f"== {step}: {found.line}")
            return found.record
        return None

    # ------------------------------------------------------------ the steps
    def stage_a(self) -> dict[str, Any] | None:
        plan_run = StageRun(self.settings, self.model, StageRequest(step="stage-a", stage="a"), out=_quiet)
        record = self._reused("stage-a", plan_run)
        if record is None:
            outcome = self._run([Job("stage-a", ["stage", "--stage", "a"])])
            record = _evidence(outcome[0]) if outcome else None
        return record

    def stage_b_and_separate(self, on: list[str], separate: list[str]) -> tuple[dict[str, Any] | None, list[Outcome]]:
        features = ",".join(on)
        label = f"stage-b (feature-first: {', '.join(on)})" if on else "stage-b"
        plan_run = feature_run(self.settings, self.model, on) if on else \
            StageRun(self.settings, self.model, StageRequest(step="stage-b", stage="b"), out=_quiet)
        plan_run.out = _quiet
        reused = self._reused("stage-b", plan_run)
        jobs = [] if reused else [Job(label, ["stage", "--stage", "b", "--features", features])]
        jobs += [Job(name, ["gate", name]) for name in separate]
        outcomes = self._run(jobs)
        record = reused if reused else (_evidence(outcomes[0]) if outcomes else None)
        return record, outcomes[0 if reused else 1:]

    def _probe(self, sets: list[list[str]]) -> list[dict[str, Any] | None]:
        jobs = [Job(f"isolation: stage-b with {', '.join(s) if s else 'no feature (the base command)'}",
                    ["stage", "--stage", "b", "--features", ",".join(s)]) for s in sets]
        return [_evidence(o) for o in self._run(jobs)]

    def isolate(self, on: list[str], failed: dict[str, Any]) -> dict[str, Any]:
        """Bisect the failed run's features: the base first (with the first half when two groups
        are free), then halves; a passing probe decides its features from their own lines."""
        self.out(f"== isolation: the feature-first Stage B failed ({failed.get('category')}); bisecting "
                 f"{', '.join(on)} (one start per probe)")
        probes: list[dict[str, Any]] = []
        candidates, failing = list(on), failed
        first = [[]] + ([candidates[:math.ceil(len(candidates) / 2)]] if len(candidates) > 1 else [])
        together = plan_slots(self.settings, self.profile, self._world(), 2).parallel
        records = self._probe(first if together else first[:1])
        culprit: str | None = None
        for wanted, record in zip(first, records):
            probes.append({"features": wanted, "run_dir": (record or {}).get("run_dir"),
                           "verdict": (record or {}).get("verdict")})
        base = records[0] if records else None
        if base is None or base.get("verdict") == "INTERRUPTED":
            return self._isolation_record(on, probes, None, failing, interrupted=True)
        if base.get("verdict") != "PASS":
            return self._isolation_record(on, probes, "base", base)
        pending = records[1:]
        while len(candidates) > 1:
            half = candidates[:math.ceil(len(candidates) / 2)]
            record = pending.pop(0) if pending else None
            if record is None:
                record = self._probe([half])[0]
                probes.append({"features": half, "run_dir": (record or {}).get("run_dir"),
                               "verdict": (record or {}).get("verdict")})
            if record is None or record.get("verdict") == "INTERRUPTED":
                return self._isolation_record(on, probes, None, failing, interrupted=True)
            if record.get("verdict") == "PASS":
                candidates = candidates[len(half):]
            else:
                candidates, failing = half, record
        culprit = candidates[0]
        return self._isolation_record(on, probes, culprit, failing)

    def _isolation_record(self, on: list[str], probes: list[dict[str, Any]], culprit: str | None,
                          failing: dict[str, Any], interrupted: bool = False) -> dict[str, Any]:
        run_dir = ev.new_run_dir(self.settings.runs_dir, self.model.name, "isolation")
        cause = failing.get("root_cause") or {}
        decides: dict[str, Any] = {}
        if culprit and culprit != "base":
            passed = [p for p in probes if p["verdict"] == "PASS"]
            decides[culprit] = {
                "verdict": "FAIL", "category": failing.get("category"), "run_dir": failing.get("run_dir"),
                "line": cause.get("text") or failing.get("reason"), "line_no": cause.get("line_no"),
                "reason": (f"the Stage B with {culprit} on failed ({failing.get('category')}) and "
                           f"{len(passed)} probe(s) without it passed: {culprit} breaks the start")}
        record = {"schema": 1, "status": "done", "step": "isolation", "model": self.model.name,
                  "features": on, "probes": probes, "culprit": culprit, "decides": decides,
                  "verdict": "INTERRUPTED" if interrupted else "FAIL", "run_dir": str(run_dir),
                  "started_at": ev.utc_iso(), "finished_at": ev.utc_iso()}
        ev.atomic_write_json(run_dir / "evidence.json", record)
        best = max((p for p in probes if p["verdict"] == "PASS" and p["run_dir"]),
                   key=lambda p: len(p["features"]), default=None)
        if best:  # latest-stage-b: the passing Stage B with the most features on
            ev.point_latest(Path(best["run_dir"]), "stage-b")
        if culprit == "base":
            self.out(f"isolation: Stage B fails without any feature: the base command is the culprit "
                     f"(run {failing.get('run_dir')}); next: make ladder MODEL={self.model_arg}")
        elif culprit:
            flags = " ".join((failing.get("variant") or {}).get("flags") or [])
            self.out(f"isolation: culprit {culprit} (the runs without it passed; evidence {run_dir}); "
                     f"next: make ladder MODEL={self.model_arg} EXTRA_ARGS={shlex.quote(flags)}")
        return record

    def run(self) -> int:
        default_set = list(self.rules["stage_b_features"]) + list(self.rules["separate"])
        record_a = self.stage_a()
        if record_a is None or self.interrupted:
            return self._finish(EXIT_INTERRUPTED)
        if record_a.get("verdict") == "FAIL" and (record_a.get("readiness") or {}).get("state") != "ready":
            cause = (record_a.get("root_cause") or {}).get("text") or record_a.get("reason")
            self.out(f"== stage-b: not started: Stage A failed at startup [{record_a.get('category')}] ({cause}); "
                     "Stage B starts the same command with real weights and would fail the same way; "
                     "fix Stage A first (flashcomm1 is not started either)")
            return self._finish(EXIT_FAIL)
        decided = decisions(self.settings, self.model, default_set)
        for name in sorted(decided, key=matrix.FEATURES.index):  # the checklist's order
            decision = decided[name]
            if decision.verdict is not None:
                self.out(f"== {name}")
                gates.write_no_run(self.settings, decision, model=self.model, backend=self.settings.backend)
                self.out(f"{decision.verdict} {name} {self.model.name}: {decision.reason}\n  no server started")
        on = [n for n in self.rules["stage_b_features"] if decided[n].verdict is None]
        separate = [n for n in self.rules["separate"] if decided[n].verdict is None]
        record_b, _others = self.stage_b_and_separate(on, separate)
        if self.interrupted or record_b is None:
            return self._finish(EXIT_INTERRUPTED)
        if record_b.get("verdict") == "FAIL" and on:
            self.isolate(on, record_b)
        elif record_b.get("verdict") == "PASS":
            missing = [n for n in on if ((record_b.get("decides") or {}).get(n) or {}).get("verdict") != "PASS"]
            for name in missing:
                why = ((record_b.get("decides") or {}).get(name) or {}).get("reason") or "no evidence line"
                self.out(f"isolation: {name} shows no evidence in the feature-first Stage B ({why}); "
                         f"running its own gate")
            self._run([Job(f"{name} (isolation)", ["gate", name]) for name in missing])
        return self._finish(EXIT_INTERRUPTED if self.interrupted else None)

    def _finish(self, code: int | None) -> int:
        self.out(f"== matrix ({self.starts} server start(s) in this make all-features)")
        data, json_path, md_path = matrix.write_matrix(self.model, self.settings.backend)
        self.out(matrix.render_terminal(data))
        self.out(f"matrix: {json_path}\n        {md_path}")
        return code if code is not None else matrix.exit_code(data)


def _started(outcome: Outcome) -> bool:
    record = _evidence(outcome)
    return bool(record and record.get("command") and record.get("server_started", True))


def _evidence(outcome: Outcome) -> dict[str, Any] | None:
    if not outcome.run_dir:
        return None
    try:
        record = ev.read_json(Path(outcome.run_dir) / "evidence.json")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
