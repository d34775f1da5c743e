"""Feature gates (`make ep`, `flashcomm1`, `mtp`, `eager`, `dynamo-fallback`, `text-only`).

Each gate is decided from triage facts and the feature rules (helpers/features.yaml) plus the
gate data (helpers/gates.yaml): either a Variant to run as a normal stage run, or a no-run
verdict (NOT_APPLICABLE / CHECKPOINT_MISSING / FRAMEWORK_UNSUPPORTED) that still leaves a run
directory with evidence.json but starts no server. After a run, a PASSing server also has to show
the feature's own evidence in its log, else the feature FAILs with the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from helpers import evidence as ev
from helpers import features as feature_rules
from helpers import profiles
from helpers import triage as triage_module
from helpers.errors import EXIT_PASS, UsageError
from helpers.plan import Variant
from helpers.settings import Settings

GATES_PATH = Path(__file__).resolve().parent / "gates.yaml"
NO_RUN_VERDICTS = ("NOT_APPLICABLE", "CHECKPOINT_MISSING", "FRAMEWORK_UNSUPPORTED")
DEPRECATION_NEEDLE = "FlashComm is deprecated"


@dataclass
class GateSpec:
    name: str
    feature: str | None = None
    applies_when: dict[str, Any] = field(default_factory=dict)
    because: str = ""
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    extra_flags_when: list[dict[str, Any]] = field(default_factory=list)
    evidence_keys: list[str] = field(default_factory=list)
    evidence_patterns: list[str] = field(default_factory=list)
    contradicts: list[str] = field(default_factory=list)
    failure_names: list[str] = field(default_factory=list)
    env_evidence: str = ""


def load_specs(path: Path | None = None) -> dict[str, GateSpec]:
    path = path or GATES_PATH
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {name: GateSpec(name=name, **(entry or {})) for name, entry in (data.get("gates") or {}).items()}


def gate_names() -> list[str]:
    return list(load_specs())


# --- triage facts -----------------------------------------------------------------------------

@dataclass
class TriageFacts:
    """What the gates need from triage: the facts the rules read, and the record they came from."""

    facts: dict[str, Any]
    assessments: dict[str, dict[str, Any]]
    versions: dict[str, str | None]
    source: str  # "triage.json" | "in-process triage (no registry)"
    path: str | None
    created_utc: str | None


def facts_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The feature facts (helpers/triage.py feature_facts) rebuilt from a triage.json record."""
    config = record.get("config") or {}
    moe = config.get("moe") or {}
    mm = config.get("multimodal") or {}
    mtp = record.get("mtp") or {}
    parallel = record.get("parallel") or {}
    profile_backend = parallel.get("backend", "")
    return {
        "backend": profile_backend,
        "is_moe": bool(moe.get("is_moe")),
        "num_experts": moe.get("num_experts"),
        "moe_evidence": f"{moe.get('key')}={moe.get('num_experts')}" if moe.get("is_moe")
        else "no routed experts in config",
        "is_multimodal": bool(mm.get("is_multimodal")),
        "mm_evidence": ", ".join(mm.get("keys") or []) or "no vision_config / audio_config",
        "mtp_config_layers": mtp.get("config_layers", 0),
        "mtp_weight_layers": len(mtp.get("weight_layers") or []),
        "mtp_status": mtp.get("status"),
        "mtp_evidence": mtp.get("evidence", ""),
        "has_weights": bool((record.get("weights") or {}).get("tensor_count")),
        "tp": parallel.get("tp"),
        "model_type": config.get("model_type"),
    }


def _mtime_utc(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stale_because(record: dict[str, Any], model_dir: Path, backend: str, versions: dict[str, str | None]) -> str:
    """Why a triage.json no longer describes this checkpoint on this box ('' when it still does)."""
    if (record.get("model") or {}).get("path") != str(model_dir):
        return f"it describes {(record.get('model') or {}).get('path')}"
    if (record.get("parallel") or {}).get("backend") != backend:
        return f"it was made for backend {(record.get('parallel') or {}).get('backend')}"
    created = str(record.get("created_utc") or "")
    inputs = [model_dir / "config.json", *model_dir.glob("*.safetensors"), *model_dir.glob("*.index.json"),
              feature_rules.RULES_PATH]
    newer = [p.name for p in inputs if p.exists() and _mtime_utc(p) > created]
    if newer:
        return f"{newer[0]} changed after it was written"
    recorded = record.get("versions") or {}
    for package in ("vllm", "vllm-ascend"):
        if recorded.get(package) != versions.get(package):
            return f"{package} is now {versions.get(package)} (triage saw {recorded.get(package)})"
    return ""


def load_triage(settings: Settings, model_dir: Path, backend: str,
                out: Callable[[str], None] | None = None) -> TriageFacts:
    """triage.json when it is fresh; else triage in-process without the registry (not written)."""
    versions = triage_module.installed_versions()
    path = triage_module.triage_path(settings, model_dir.name)
    record: dict[str, Any] | None = None
    why = "there is no triage.json"
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            why = stale_because(record, model_dir, backend, versions)
        except (OSError, json.JSONDecodeError) as exc:
            why = f"triage.json is unreadable ({exc})"
        if why:
            record = None
    if record is not None:
        source, where = "triage.json", str(path)
    else:
        if out:
            out(f"  triage: {why}; triaging in-process (no registry)")
        fresh = triage_module.triage(settings, registry=False, backend=backend)
        record = fresh.to_dict()
        # Written so the next gate reads it at once; it says itself that the registry was skipped,
        # and `make triage` keeps it as triage.<stamp>.json when it writes a full one.
        triage_module.write_record(fresh, path)
        source, where = f"in-process triage (no registry): {why}", str(path)
    assessments = {f["id"]: f for f in record.get("features") or []}
    return TriageFacts(facts=facts_from_record(record), assessments=assessments,
                       versions=record.get("versions") or versions, source=source, path=where,
                       created_utc=record.get("created_utc"))


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


def deprecation_line(model_runs: Path, needle: str = DEPRECATION_NEEDLE) -> tuple[str, str] | None:
    """The newest recorded run of this model whose log printed the deprecation: (line, run_dir)."""
    found: list[tuple[str, str, str]] = []
    for path in model_runs.glob("*/evidence.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        for line in (record.get("log_evidence") or {}).get("deprecated") or []:
            if needle in str(line):
                found.append((str(record.get("finished_at") or ""), str(line), str(path.parent)))
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
            seen = deprecation_line(ctx.runs_dir)
            if seen:
                decision.evidence_line = seen[0]
                decision.reason += f"; a run printed it: {seen[0].strip()} ({seen[1]})"
        elif version is None:
            decision.reason += " (vllm-ascend is not installed here)"
        return decision
    if decision.verdict is None:
        tp = ctx.user_tp or ctx.facts.facts.get("tp") or 1
        if int(tp) <= 1:
            decision.reason += ("; note: TP=1 - vllm-ascend refuses flashcomm1 when tp_size is 1 "
                                "(`Flash Comm v1 (Sequence Parallelism) is only supported when tp_size > 1`)")
    return decision


def decide_isolation(spec: GateSpec, ctx: GateContext) -> GateDecision:
    """eager, dynamo-fallback, text-only: switches that isolate a failure, not model features."""
    facts = ctx.facts.facts
    if spec.applies_when and not feature_rules.condition_holds(spec.applies_when, facts):
        return _no_run(spec, ctx, "NOT_APPLICABLE", feature_rules.render(spec.because, facts), None)
    variant = Variant(name=spec.name, flags=list(spec.flags), env=dict(spec.env))
    what = " ".join(spec.flags + [f"{k}={v}" for k, v in spec.env.items()])
    return GateDecision(spec.name, None, None, f"isolation run with {what}", variant, _triage_evidence(ctx, None))


DECIDERS: dict[str, Callable[[GateSpec, GateContext], GateDecision]] = {
    "ep": decide_feature,
    "flashcomm1": decide_flashcomm1,
    "mtp": decide_feature,
    "eager": decide_isolation,
    "dynamo-fallback": decide_isolation,
    "text-only": decide_isolation,
}


def decide(name: str, ctx: GateContext, specs: dict[str, GateSpec] | None = None) -> GateDecision:
    specs = specs or load_specs()
    if name not in specs:
        raise UsageError(f"unknown gate {name!r}", f"use one of: {', '.join(specs)}")
    return DECIDERS.get(name, decide_isolation)(specs[name], ctx)


# --- evidence after a run ---------------------------------------------------------------------

def find_in_log(log: Path, patterns: list[str]) -> tuple[str, int] | None:
    """The first serve.log line matching any pattern: (line, line number)."""
    if not patterns or not log.is_file():
        return None
    compiled = [re.compile(p) for p in patterns]
    with log.open("r", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if any(c.search(line) for c in compiled):
                return line.rstrip("\n"), number
    return None


def feature_evidence(spec: GateSpec, scan_evidence: dict[str, Any], scan_lines: dict[str, int], log: Path,
                     server_env: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
    """(feature_evidence, why-not). Evidence found -> ({line, line_no, ...}, ''), else (None, reason)."""
    contradiction = find_in_log(log, spec.contradicts)
    if contradiction:
        return None, (f"the option did not take effect: serve.log line {contradiction[1]}: "
                      f"{contradiction[0].strip()[:200]}")
    for key in spec.evidence_keys:
        value = scan_evidence.get(key)
        if value:
            return {"key": key, "line": str(value), "line_no": scan_lines.get(key)}, ""
    hit = find_in_log(log, spec.evidence_patterns)
    if hit:
        return {"key": None, "line": hit[0], "line_no": hit[1]}, ""
    if spec.env_evidence and server_env.get(spec.env_evidence):
        value = server_env[spec.env_evidence]
        return {"key": None, "env": {spec.env_evidence: value},
                "line": f"{spec.env_evidence}={value} in the server environment (command.sh); no Dynamo trace "
                        f"or compile line in serve.log", "line_no": None}, ""
    wanted = spec.evidence_keys + spec.evidence_patterns
    return None, f"no evidence in serve.log that {spec.name} took effect (looked for: {', '.join(wanted)})"


def apply_feature_check(spec: GateSpec, record: dict[str, Any], log: Path) -> None:
    """Turn a PASSing server without the feature's evidence into a FAIL of the feature, and name a
    failing server's gate failure line (e.g. flashcomm1's tp_size / EP requirement)."""
    env = (record.get("command") or {}).get("env") or {}
    if record.get("verdict") == "PASS":
        found, why = feature_evidence(spec, record.get("log_evidence") or {},
                                      (record.get("log_scan") or {}).get("evidence_lines") or {}, log, env)
        record["feature_evidence"] = found
        if found is None:
            record["verdict"], record["category"] = "FAIL", "feature-not-active"
            record["reason"] = (f"the server passed its smoke requests, but {spec.name} is not proven: {why}")
        if spec.name == "mtp":
            record["feature_metrics"] = (record.get("log_evidence") or {}).get("spec_decode_metrics")
    elif record.get("verdict") == "FAIL":
        record["feature_evidence"] = None
        named = find_in_log(log, spec.failure_names)
        if named:
            record["gate_failure"] = {"line": named[0], "line_no": named[1]}
            record["reason"] = f"{record.get('reason')}; {spec.name} gate failure (serve.log line {named[1]}): " \
                               f"{named[0].strip()[:200]}"


# --- running ----------------------------------------------------------------------------------

def write_no_run(settings: Settings, decision: GateDecision, *, model_dir: Path, backend: str, stage: str,
                 config: dict[str, Any]) -> dict[str, Any]:
    """A run directory with evidence.json for a verdict decided without a server."""
    name = ev.safe_name(model_dir.name)
    run_dir = ev.new_run_dir(settings.runs_dir, name, decision.gate)
    now = ev.utc_iso()
    record = {
        "schema": 1, "status": "done", "step": decision.gate, "stage": stage, "feature": decision.gate,
        "model": name, "model_path": str(model_dir), "served_name": settings.served_name or model_dir.name,
        "backend": backend, "multimodal": bool(decision.triage["facts"].get("is_multimodal")),
        "architectures": config.get("architectures"), "variant": None, "command": None,
        "versions": {k: v for k, v in installed_package_versions().items()},
        "started_at": now, "finished_at": now, "timings": {}, "readiness": None, "requests": [], "graph": None,
        "verdict": decision.verdict, "category": None, "reason": decision.reason, "root_cause": None,
        "signatures": [], "log_evidence": {}, "log": None, "server_started": False,
        "feature_evidence": {"line": decision.evidence_line, "line_no": None} if decision.evidence_line else None,
        "gate": decision.to_dict(), "run_dir": str(run_dir), "exit_code": EXIT_PASS,
    }
    ev.atomic_write_json(run_dir / "evidence.json", record)
    ev.point_latest(run_dir, decision.gate)
    return record


def installed_package_versions() -> dict[str, str | None]:
    return triage_module.installed_versions()


def run_gate(settings: Settings, name: str, out: Callable[[str], None] | None = None) -> tuple[int, dict[str, Any]]:
    """Decide the gate; run it as a stage run when it applies. Returns (exit code, evidence record)."""
    from helpers.stage import StageRequest, StageRun

    out = out or (lambda line: print(line, flush=True))
    specs = load_specs()
    if name not in specs:
        raise UsageError(f"unknown gate {name!r}", f"use one of: {', '.join(specs)}")
    model_dir = triage_module.resolve_model(settings)
    backend = settings.backend or profiles.detect_backend()
    settings.backend = backend
    facts = load_triage(settings, model_dir, backend, out)
    ctx = GateContext(facts=facts, runs_dir=ev.model_runs_dir(settings.runs_dir, model_dir.name), user_tp=settings.tp)
    decision = decide(name, ctx, specs)
    if decision.verdict is not None:
        config = triage_module.read_config(model_dir)
        record = write_no_run(settings, decision, model_dir=model_dir, backend=backend, stage=settings.stage,
                              config=config)
        out(f"{decision.verdict} {name} {record['model']}: {decision.reason}\n  no server started; "
            f"evidence: {record['run_dir']}")
        return EXIT_PASS, record
    assert decision.variant is not None
    out(f"[{name}] {decision.reason}")
    run = StageRun(settings, StageRequest(step=name, stage=settings.stage, variant=decision.variant), out=out)
    spec = specs[name]

    def check(stage_run: "StageRun") -> None:
        stage_run.record["gate"] = decision.to_dict()
        assert stage_run.run_dir is not None
        apply_feature_check(spec, stage_run.record, stage_run.run_dir / "serve.log")

    run.post_check = check
    code = run.run()
    return code, run.record
