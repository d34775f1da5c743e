"""Feature gates (`make ep`, `flashcomm1`, `mtp`, `eager`, `dynamo-fallback`, `text-only`).

Each gate is decided from triage facts and the switch rules (helpers/features.yaml,
helpers/gates.yaml): either a Variant to run as a normal stage run, or a no-run verdict
(NOT_APPLICABLE / CHECKPOINT_MISSING / FRAMEWORK_UNSUPPORTED) that still leaves a run directory
with evidence.json but starts no server. After a run, a PASSing server also has to show the
feature's own evidence in its log, else the feature FAILs with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from helpers import ascend_facts, profiles
from helpers import evidence as ev
from helpers import features as feature_rules
from helpers.errors import EXIT_FAIL, EXIT_PASS, UsageError
from helpers.features import GateSpec, load_specs
from helpers.catalog import load_catalog
from helpers.model import Model
from helpers.plan import Variant
from helpers.settings import Settings
from helpers.stage import StageRequest, StageRun
from helpers.triage import TriageFacts, current_facts
from helpers.verdict.proof import apply_feature_check

NO_RUN_VERDICTS = ("NOT_APPLICABLE", "CHECKPOINT_MISSING", "FRAMEWORK_UNSUPPORTED")
# A server that took a feature's option but logs nothing when it takes effect: not PASS, not FAIL.
PREDICTED = "predicted-refusal"  # the category of a FAIL decided from versions and the plan, no start
FLASHCOMM_TP_FACT = "flashcomm1-tp-requirement"
# The signature whose line proves flashcomm1 is gone from the installed vllm-ascend.
FLASHCOMM_REMOVED_SIGNATURE = "flashcomm-deprecated"


def data_parallel_size(extra_args: str) -> int:
    """--data-parallel-size / -dp N in EXTRA_ARGS (1 when absent)."""
    match = re.search(r"(?:--data-parallel-size|-dp)[= ](\d+)", extra_args or "")
    return int(match.group(1)) if match else 1


def gate_names() -> list[str]:
    return list(load_specs())


# --- decisions --------------------------------------------------------------------------------

@dataclass
class GateDecision:
    gate: str
    feature: str | None
    verdict: str | None  # None: start a server with `variant`
    reason: str
    variant: Variant | None
    triage: dict[str, Any]
    evidence_line: str | None = None  # for a no-run verdict: the line that proves it (if any)

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "feature": self.feature, "verdict": self.verdict, "reason": self.reason,
                "variant": None if self.variant is None else {"name": self.variant.name, "flags": self.variant.flags,
                                                              "env": self.variant.env},
                "triage": self.triage, "evidence_line": self.evidence_line}


@dataclass
class GateContext:
    facts: TriageFacts
    runs_dir: Path  # RUNS_DIR/<model>
    user_tp: int | None = None
    data_parallel: int = 1  # --data-parallel-size in EXTRA_ARGS


def _triage_evidence(ctx: GateContext, assessment: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("is_moe", "moe_evidence", "is_multimodal", "mm_evidence", "mtp_status", "mtp_evidence", "tp", "backend")
    return {"source": ctx.facts.source, "path": ctx.facts.path, "created_utc": ctx.facts.created_utc,
            "facts": {k: ctx.facts.facts.get(k) for k in keys},
            "assessment": assessment}


def _no_run(spec: GateSpec, ctx: GateContext, verdict: str, reason: str, assessment: dict[str, Any] | None,
            line: str | None = None) -> GateDecision:
    return GateDecision(spec.name, spec.feature, verdict, reason, None, _triage_evidence(ctx, assessment), line)


def _extra_flags(spec: GateSpec, facts: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for entry in spec.extra_flags_when:
        if feature_rules.condition_holds(entry.get("when") or {}, facts):
            flags += [f for f in entry.get("flags") or [] if f not in flags]
    return flags


def decide_feature(spec: GateSpec, ctx: GateContext) -> GateDecision:
    """ep, mtp (and the common part of flashcomm1): the feature rule as triage assessed it."""
    facts = ctx.facts.facts
    assessment = ctx.facts.assessments.get(spec.feature or "")
    if assessment is None:
        raise UsageError(f"triage has no assessment of feature {spec.feature!r}", "rerun make triage")
    category = assessment["category"]
    if category != feature_rules.SUPPORTED:
        verdict = assessment.get("verdict") or {
            feature_rules.NOT_APPLICABLE: "NOT_APPLICABLE", feature_rules.CHECKPOINT_MISSING: "CHECKPOINT_MISSING",
            feature_rules.FRAMEWORK_UNSUPPORTED: "FRAMEWORK_UNSUPPORTED"}[category]
        return _no_run(spec, ctx, verdict, assessment["evidence"], assessment)
    flags = list(assessment.get("flags") or [])
    flags += [f for f in _extra_flags(spec, facts) if f not in flags]
    variant = Variant(name=spec.name, flags=flags, env=dict(assessment.get("env") or {}))
    return GateDecision(spec.name, spec.feature, None, assessment["evidence"], variant,
                        _triage_evidence(ctx, assessment))


def recorded_signature_line(model_runs: Path, sig_id: str) -> tuple[str, str] | None:
    """The newest recorded run of this model whose log matched a signature: (line, run_dir)."""
    pattern = load_catalog().by_id(sig_id).pattern
    found: list[tuple[str, str, str]] = []
    for run_dir, record in ev.iter_evidence(model_runs):
        lines = [h.get("text") for h in record.get("signatures") or [] if h.get("sig_id") == sig_id]
        lines += [line for line in (record.get("log_evidence") or {}).get("deprecated") or []
                  if pattern.search(str(line))]
        for line in lines:
            found.append((str(record.get("finished_at") or ""), str(line), str(run_dir)))
    if not found:
        return None
    _, line, run_dir = max(found)
    return line, run_dir


def decide_flashcomm1(spec: GateSpec, ctx: GateContext) -> GateDecision:
    decision = decide_feature(spec, ctx)
    assessment = ctx.facts.assessments.get("flashcomm1") or {}
    if decision.verdict == "FRAMEWORK_UNSUPPORTED":
        version = ctx.facts.versions.get("vllm-ascend")
        if version and assessment.get("version_mode") == "removed":
            decision.reason = f"vllm-ascend {version}: {decision.reason}"
            seen = recorded_signature_line(ctx.runs_dir, FLASHCOMM_REMOVED_SIGNATURE)
            if seen:
                decision.evidence_line = seen[0]
                decision.reason += f"; a run printed it: {seen[0].strip()} ({seen[1]})"
        elif version is None:
            decision.reason += " (vllm-ascend is not installed here)"
        return decision
    if decision.verdict is None:
        tp = ctx.user_tp or ctx.facts.facts.get("tp") or 1
        version = ctx.facts.versions.get("vllm-ascend")
        fact = ascend_facts.get(FLASHCOMM_TP_FACT)
        if int(tp) <= 1 and fact.holds_for(version):
            # the installed version refuses it: a start would only record the refusal
            refused = _no_run(spec, ctx, "FAIL", (
                f"predicted refusal, no server started: vllm-ascend {version} refuses flashcomm1 at TP={tp} "
                f"(`... is only supported when tp_size > 1`; fact {FLASHCOMM_TP_FACT}: {fact.source[0]}); "
                "rerun with TP=2 or more"), assessment)
            refused.variant = decision.variant
            return refused
        if int(tp) <= 1:
            decision.reason += ("; note: TP=1 - vllm-ascend refuses flashcomm1 when tp_size is 1 "
                                "(`... is only supported when tp_size > 1`, worded by version: "
                                f"fact {FLASHCOMM_TP_FACT})")
    return decision


def decide_ep(spec: GateSpec, ctx: GateContext) -> GateDecision:
    """EP as triage assessed it; with TP x DP = 1 the experts cannot be split: the reason says so."""
    decision = decide_feature(spec, ctx)
    ranks = int(ctx.user_tp or ctx.facts.facts.get("tp") or 1) * ctx.data_parallel
    if decision.verdict is None and ranks <= 1:
        decision.reason += ("; note: TP x DP = 1: the expert-parallel group has one rank, every expert stays on it "
                            "(set TP or DP above 1 for a split)")
    return decision


def decide_isolation(spec: GateSpec, ctx: GateContext) -> GateDecision:
    """eager, dynamo-fallback, text-only: switches that isolate a failure, not model features."""
    facts = ctx.facts.facts
    if spec.applies_when and not feature_rules.condition_holds(spec.applies_when, facts):
        return _no_run(spec, ctx, "NOT_APPLICABLE", feature_rules.render(spec.because, facts), None)
    what = " ".join(spec.flags + [f"{k}={v}" for k, v in spec.env.items()])
    return GateDecision(spec.name, None, None, f"isolation run with {what}", spec.variant(),
                        _triage_evidence(ctx, None))


DECIDERS: dict[str, Callable[[GateSpec, GateContext], GateDecision]] = {"flashcomm1": decide_flashcomm1,
                                                                        "ep": decide_ep}


def decide(name: str, ctx: GateContext, specs: dict[str, GateSpec] | None = None) -> GateDecision:
    specs = specs or load_specs()
    if name not in specs:
        raise UsageError(f"unknown gate {name!r}", f"use one of: {', '.join(specs)}")
    spec = specs[name]
    default = decide_feature if spec.feature else decide_isolation
    return DECIDERS.get(name, default)(spec, ctx)


def write_no_run(settings: Settings, decision: GateDecision, *, model: Model, backend: str) -> dict[str, Any]:
    """A run directory with evidence.json for a verdict decided without a server."""
    run_dir = ev.new_run_dir(settings.runs_dir, model.name, decision.gate)
    now = ev.utc_iso()
    record = {
        "schema": 1, "status": "done", "step": decision.gate, "stage": settings.stage, "feature": decision.gate,
        "model": model.name, "model_path": str(model.checkpoint), "served_name": model.served_name,
        "backend": backend, "multimodal": bool(decision.triage["facts"].get("is_multimodal")),
        "architectures": model.config.get("architectures"), "variant": None, "command": None,
        "versions": profiles.load(backend).facts_box().versions(),
        "started_at": now, "finished_at": now, "timings": {}, "readiness": None, "requests": [], "graph": None,
        "verdict": decision.verdict, "category": None, "reason": decision.reason, "root_cause": None,
        "signatures": [], "log_evidence": {}, "log": None, "server_started": False,
        "feature_evidence": {"line": decision.evidence_line, "line_no": None} if decision.evidence_line else None,
        "gate": decision.to_dict(), "run_dir": str(run_dir),
        "exit_code": EXIT_FAIL if decision.verdict == "FAIL" else EXIT_PASS,
    }
    if decision.verdict == "FAIL":
        record["category"] = PREDICTED
    ev.atomic_write_json(run_dir / "evidence.json", record)
    ev.point_latest(run_dir, decision.gate)
    return record


def run_gate(settings: Settings, model: Model, name: str,
             out: Callable[[str], None] | None = None) -> tuple[int, dict[str, Any]]:
    """Decide the gate; run it as a stage run when it applies. Returns (exit code, evidence record)."""
    out = out or (lambda line: print(line, flush=True))
    specs = load_specs()
    if name not in specs:
        raise UsageError(f"unknown gate {name!r}", f"use one of: {', '.join(specs)}")
    backend = settings.backend or profiles.detect_backend()
    settings.backend = backend
    facts = current_facts(settings, model, backend, out)
    ctx = GateContext(facts=facts, runs_dir=model.runs_dir, user_tp=settings.tp,
                      data_parallel=data_parallel_size(settings.extra_args))
    decision = decide(name, ctx, specs)
    if decision.verdict is not None:
        record = write_no_run(settings, decision, model=model, backend=backend)
        out(f"{decision.verdict} {name} {record['model']}: {decision.reason}\n  no server started; "
            f"evidence: {record['run_dir']}")
        return record["exit_code"], record
    assert decision.variant is not None
    out(f"[{name}] {decision.reason}")
    run = StageRun(settings, model, StageRequest(step=name, stage=settings.stage, variant=decision.variant), out=out)
    spec = specs[name]

    def check(stage_run: StageRun) -> None:
        stage_run.record["gate"] = decision.to_dict()
        assert stage_run.run_dir is not None
        apply_feature_check(spec, stage_run.record, stage_run.run_dir / "serve.log")

    run.post_check = check
    code = run.run()
    return code, run.record
