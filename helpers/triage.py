"""`make triage`: what the checkpoint is, what this box can do with it, what to run next.

Reads config.json and the safetensors headers (never tensor data), asks the installed vLLM's own
model registry (helpers/registry.py: a subprocess, cached), checks weight coverage against the
architecture transformers builds on the meta device, decides feature applicability from
helpers/features.yaml, plans TP for the box (helpers/parallel.py), and writes
RUNS_DIR/<model>/triage.json atomically (a previous triage.json is kept as
triage.<UTC stamp>.json). Later steps read its facts through `current_facts`.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from helpers import ascend_build, ascend_facts, graphmode, hf_id, layers, parallel, profiles, sourcetree
from helpers.adapt import assess as adapt_assess
from helpers import checkpoint as ckpt
from helpers import coverage as coverage_check
from helpers import evidence as ev
from helpers import features as feature_rules
from helpers.errors import UsageError
from helpers.model import Model, checkpoint_fingerprint
from helpers.registry import RegistryCheck, RegistryQuery
from helpers.settings import Settings

SCHEMA = "bringup.triage/1"
# registry.method of a triage.json a stage or gate wrote for itself (no registry asked)
IN_PROCESS = "skipped: triaged in-process by a stage or gate run"
FP8_REFUSED = ("fp8 checkpoint: vllm-ascend {version} reports `fp8 quantization is currently not supported in "
               "npu` ({why}); dequantise to bf16 at load time from each *.weight + "
               "*.weight_scale_inv pair (fail on unpaired keys)")
FP8_ACCEPTED = ("fp8 checkpoint: vllm-ascend {version} accepts fp8 ({why}, PR #9757): serve it as is; "
                "dequantise only if the fp8 kernels fail")
FP8_UNKNOWN = ("fp8 checkpoint: vllm-ascend below 0.21.0rc1 reports `fp8 quantization is currently not supported "
               "in npu`: there, dequantise to bf16 at load time (*.weight + *.weight_scale_inv pairs); "
               "0.21.0rc1 and later accept fp8 (PR #9757); vllm-ascend {version}")


def fp8_note(vllm_ascend: str | ascend_build.Build | None,
             source_contains: Callable[[str, str], bool | None] | None = None) -> str:
    """What an fp8 checkpoint means for the installed vllm-ascend: its source first (a build
    between releases reports an old version number), else its version (facts, not a guess)."""
    build = ascend_build.parse(vllm_ascend) if isinstance(vllm_ascend, str) else vllm_ascend
    shown = build.describe() if build else "is not installed here"
    accepted, why = ascend_facts.get("fp8-accepted").decide(build, source_contains)
    if accepted:
        return FP8_ACCEPTED.format(version=shown, why=why)
    refused, why = ascend_facts.get("quantization-not-supported-npu").decide(build, source_contains)
    if refused:
        return FP8_REFUSED.format(version=shown, why=why)
    return FP8_UNKNOWN.format(version=shown)


# --- the record -----------------------------------------------------------------------------

@dataclass
class MtpStatus:
    status: str  # enabled | checkpoint-missing | not-present
    config_layers: int
    config_key: str | None
    weight_layers: list[str]
    weight_tensors: int
    evidence: str


@dataclass
class TriageRecord:
    schema: str
    created_utc: str
    model: dict[str, Any]
    hf_id: str | None
    hf_id_source: str
    inventory: dict[str, Any]
    config: dict[str, Any]
    registry: dict[str, Any]
    trust_remote_code: dict[str, Any]
    weights: dict[str, Any]
    layers: dict[str, Any]
    coverage: dict[str, Any]
    mtp: dict[str, Any]
    features: list[dict[str, Any]]
    feature_facts: dict[str, Any]
    parallel: dict[str, Any]
    versions: dict[str, str | None]
    warnings: list[str]
    errors: list[str]
    next_commands: list[dict[str, str]]
    exit_code: int
    elapsed_s: float
    context: dict[str, Any] = field(default_factory=dict)  # `make context` at the start of `make triage`
    adaptation: dict[str, Any] = field(default_factory=dict)  # an unregistered architecture (helpers/adapt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- assembling the record ------------------------------------------------------------------

def mtp_status(facts: ckpt.ConfigFacts, mtp_layers: list[str], mtp_tensors: int, has_weights: bool) -> MtpStatus:
    declared = facts.mtp["config_layers"]
    key = facts.mtp["key"]
    if declared and mtp_tensors:
        return MtpStatus("enabled", declared, key, mtp_layers, mtp_tensors,
                         f"config {key}={declared}; weights hold {mtp_tensors} MTP tensors ({', '.join(mtp_layers)})")
    if declared and not has_weights:
        return MtpStatus("checkpoint-missing", declared, key, [], 0,
                         f"config {key}={declared} but there are no weight files to hold the MTP layers")
    if declared:
        return MtpStatus("checkpoint-missing", declared, key, [], 0,
                         f"config {key}={declared} but the weights hold no MTP layers "
                         f"(no mtp.* tensors, no layers.{facts.num_hidden_layers}+ with eh_proj/enorm/hnorm)")
    if mtp_tensors:
        return MtpStatus("checkpoint-missing", 0, None, mtp_layers, mtp_tensors,
                         f"weights hold {mtp_tensors} MTP-style tensors ({', '.join(mtp_layers)}) "
                         "but config declares no num_nextn_predict_layers / mtp_num_hidden_layers")
    return MtpStatus("not-present", 0, None, [], 0,
                     "config declares no num_nextn_predict_layers / mtp_num_hidden_layers and the weights hold no MTP layers")


def needs_trust_remote_code(config: dict[str, Any], inventory: ckpt.Inventory, registry: RegistryCheck,
                            transformers_knows: bool | None) -> dict[str, Any]:
    reasons = []
    if inventory.auto_map and not transformers_knows:
        reasons.append(f"config auto_map points at custom code ({', '.join(sorted(set(inventory.auto_map.values()))[:3])}) "
                       "and transformers does not know the model_type")
    if inventory.auto_map and registry.registered is False:
        reasons.append("architecture not registered in vLLM; the custom modeling code would be needed")
    if inventory.tokenizer_auto_map:
        reasons.append("tokenizer_config auto_map: custom tokenizer code")
    return {"needed": bool(reasons), "reasons": reasons, "custom_code_files": inventory.custom_code,
            "auto_map": inventory.auto_map}


def feature_facts(profile: profiles.Profile, facts: ckpt.ConfigFacts, mtp: MtpStatus,
                  has_weights: bool, tp: int) -> dict[str, Any]:
    """The facts the feature rules (features.yaml) read; recorded in triage.json as they were.
    `backend` is the profile's family: a backend built on ascend is decided by ascend's rules."""
    moe = facts.moe
    return {
        "backend": profile.family,
        "graph_expected": profile.graph_expected,
        "graph_evidence": ",".join(profile.graph.get("evidence") or []),
        "is_moe": moe["is_moe"],
        "num_experts": moe["num_experts"],
        "moe_evidence": f"{moe['key']}={moe['num_experts']}" if moe["is_moe"]
        else f"no {' / '.join(ckpt.MOE_KEYS[:3])} in config",
        "is_multimodal": facts.multimodal["is_multimodal"],
        "mm_evidence": ", ".join(facts.multimodal["keys"]) or "no vision_config / audio_config",
        "mtp_config_layers": mtp.config_layers,
        "mtp_weight_layers": len(mtp.weight_layers),
        "mtp_status": mtp.status,
        "mtp_evidence": mtp.evidence,
        "has_weights": has_weights,
        "tp": tp,
        "model_type": facts.model_type,
        "architecture": (facts.architectures or [None])[0],
    }


def next_commands(name: str, record_bits: dict[str, Any]) -> list[dict[str, str]]:
    tp = record_bits["tp"]
    base = f"MODEL={shlex.quote(name)}" + (f" TP={tp}" if tp and tp > 1 else "")
    extra = " EXTRA_ARGS=--trust-remote-code" if record_bits["trust_remote_code"] else ""
    commands = adapt_assess.commands(name, record_bits.get("adaptation") or {})
    if record_bits["blocking"]:
        commands.append({"command": f"fix the checkpoint, then: make triage MODEL={shlex.quote(name)}",
                         "why": record_bits["blocking"]})
    commands.append({"command": f"make stage-a {base}{extra}", "why": "fast gate with --load-format dummy"})
    if record_bits["has_weights"] and not record_bits["blocking"]:
        commands.append({"command": f"make stage-b {base}{extra}", "why": "mandatory gate with the real weights"})
    for feature in record_bits["features"]:
        if feature["category"] == feature_rules.SUPPORTED and feature["make_target"]:
            commands.append({"command": f"make {feature['make_target']} {base}{extra}",
                             "why": f"{feature['name']}: {feature['evidence']}"})
    return commands


def triage(settings: Settings, model: Model, *, registry: bool = True, registry_timeout: float = 120.0,
           backend: str | None = None) -> TriageRecord:
    started = time.monotonic()
    query = (RegistryQuery(sourcetree.implementation_roots(settings), settings.cache_dir)
             if registry and model.facts.architectures else None)
    try:
        return _triage(settings, model, query, registry, registry_timeout, backend, started)
    finally:
        if query is not None:
            query.cancel()  # only our own probe, on an early exit


def _triage(settings: Settings, model: Model, query: RegistryQuery | None, registry_wanted: bool,
            registry_timeout: float, backend_name: str | None, started: float) -> TriageRecord:
    directory, config, facts = model.checkpoint, model.config, model.facts
    warnings: list[str] = []
    errors: list[str] = []
    try:
        inventory, index = ckpt.take_inventory(directory, config)
    except ckpt.CheckpointError as exc:
        raise UsageError(str(exc), "fix or re-create the index file") from None
    errors += inventory.problems
    scan = ckpt.scan_headers(directory, inventory.weight_files, index) if inventory.weight_format == "safetensors" \
        else ckpt.HeaderScan({}, 0, [], [], {})
    for bad in scan.unreadable:
        errors.append(f"shard {bad['file']} is unreadable: {bad['error']}")
    errors += [f"index/header mismatch: {m}" for m in scan.index_mismatches[:5]]
    has_weights = bool(scan.tensors)
    if inventory.weight_format == "none":
        errors.append(f"no weight files (*.safetensors) in {directory}: only Stage A (--load-format dummy) can run")
    elif inventory.weight_format == "pytorch-bin":
        warnings.append("weights are PyTorch .bin files: coverage is checked on safetensors headers only")
    elif not has_weights and not errors:
        errors.append("the safetensors files hold no tensors")

    coverage, transformers_knows, expects_k_norm = coverage_check.cached_assessment(
        directory, config, facts, scan.tensors, settings.cache_dir)
    if coverage.missing:
        errors.append(f"{len(coverage.missing)} expected tensors are missing from the checkpoint "
                      f"(first: {coverage.missing[0]}); vLLM may load it silently and answer with empty text")
    if coverage.incomplete:
        first = coverage.incomplete[0]
        errors.append(f"{len(coverage.incomplete)} fused tensors are incomplete (first: {first['name']}, "
                      f"{first['checkpoint_numel']} of {first['expected_numel']} elements)")
    if coverage.shape_mismatch:
        first = coverage.shape_mismatch[0]
        errors.append(f"{len(coverage.shape_mismatch)} tensors have the wrong shape (first: {first['name']} "
                      f"{first['checkpoint']} vs expected {first['expected']})")
    if coverage.fp8_unpaired:
        errors.append(f"{len(coverage.fp8_unpaired)} fp8 weights have no weight_scale_inv "
                      f"(first: {coverage.fp8_unpaired[0]}): they cannot be dequantised")
    if coverage.unexpected:
        warnings.append(f"{len(coverage.unexpected)} checkpoint tensors match no parameter of "
                        f"{coverage.model_class} (first: {coverage.unexpected[0]}): check the key mapping")

    fp8_in_weights = any(t in ckpt.FP8_DTYPES for t in scan.dtypes)
    is_fp8 = bool(facts.quantization and facts.quantization["fp8"]) or fp8_in_weights
    if is_fp8 and facts.quantization and facts.quantization["fp8"] and has_weights and not fp8_in_weights:
        warnings.append("config declares fp8 but no tensor is F8: weights were probably dequantised already")

    in_weights = layers.count_layers(scan.tensors, facts.num_hidden_layers) if facts.num_hidden_layers else None
    trimmed = bool(in_weights and facts.num_hidden_layers and in_weights < facts.num_hidden_layers)
    if trimmed:
        warnings.append(f"the weights hold {in_weights} of the {facts.num_hidden_layers} layers config.json declares "
                        "(a trimmed checkpoint): Stage B on it is a reduced-layers smoke run and never signs off")
    mtp_names, mtp_layers = ckpt.mtp_tensor_names(sorted(scan.tensors), facts.num_hidden_layers)
    mtp = mtp_status(facts, mtp_layers, len(mtp_names), has_weights)

    backend = (backend_name or settings.backend or "").strip().lower() or profiles.detect_backend()
    profile = profiles.load(backend)
    facts_box = profile.facts_box(sourcetree.implementation_roots(settings))
    default_tp = int(profile.defaults.get("tp", 1) or 1)
    if has_weights:
        weight_bytes, weight_source = scan.data_bytes, "safetensors headers"
    elif inventory.index_total_size:
        weight_bytes, weight_source = int(inventory.index_total_size), "index metadata.total_size"
    elif coverage.expected_params:
        per = 1 if is_fp8 else 2
        weight_bytes, weight_source = coverage.expected_params * per, f"estimate: {coverage.expected_params} parameters x {per} bytes"
    else:
        weight_bytes, weight_source = None, "unknown"
    plan, plan_warnings = parallel.plan_parallel(settings, profile.name, facts, weight_bytes, weight_source,
                                                 default_tp, facts_box.npu_smi(), facts_box.soc_version())
    warnings += plan_warnings
    soft = profile.graph.get("soft_partition") or {}
    seen = graphmode.soft_partition(soft, facts_box.device_view(soft.get("files") or [])) if soft else ""
    if seen:  # say it before a run fails with stream exhaustion during capture
        warnings.append(graphmode.soft_partition_warning(seen))
    has_qk_norm = (facts.model_type or "").startswith("qwen3") or expects_k_norm or any(
        n.endswith("k_norm.weight") for n in scan.tensors)
    if plan.kv_heads_replicated and has_qk_norm:
        warnings.append("this architecture has QK norm (k_norm): at TP > KV heads expect a k_norm shard mismatch "
                        "(e.g. `Attempted to load weight ... into parameter ...`) unless the model has a local "
                        "k_norm shard path")

    versions = facts_box.versions()
    builds = facts_box.builds(versions)
    for package, build in builds.items():
        if not build.is_release:
            warnings.append(f"{package} {build.describe()}: version-bound rules read its source, not this number "
                            "(fact setuptools-scm-main-version)")
    quantization_note = fp8_note(builds.get("vllm-ascend"), facts_box.source_contains) if is_fp8 else None
    if quantization_note:
        warnings.append(quantization_note)
    if query is not None:
        registry = query.result(facts.architectures, registry_timeout)
    elif registry_wanted:
        registry = RegistryCheck(status="unknown", registered=None, detail="config.json names no architectures")
    else:
        registry = RegistryCheck(status="unknown", registered=None, method="skipped", detail="--no-registry")
    if registry.vllm_version is None:
        registry.vllm_version = versions["vllm"]
    if registry.registered is False:
        warnings.append(f"{', '.join(facts.architectures)} is not registered in vLLM {registry.vllm_version}: "
                        "expect `Model architectures [...] are not supported for now`")
    trust = needs_trust_remote_code(config, inventory, registry, transformers_knows)
    # `make triage` only: a stage's in-process triage neither asks the registry nor reads remote code
    adaptation = adapt_assess.assess(directory, config, facts, scan.tensors, inventory.custom_code,
                                     registry.registered) if registry_wanted else {}

    rules = feature_rules.load_rules()
    rule_facts = feature_facts(profile, facts, mtp, has_weights, plan.tp)
    feature_list = [a.to_dict() for a in feature_rules.assess_all(
        rule_facts, rules=rules, versions={**versions, **builds}, source_probe=facts_box.source_contains,
        module_probe=facts_box.importable)]

    blocking = errors[0] if errors else ""
    exit_code = 2 if errors else 0
    name = directory.name
    # Commands repeat MODEL the way the user gave it (a name under MODEL_ROOT or a path).
    model_arg = model.requested or name
    weights = {
        "format": inventory.weight_format, "shard_count": inventory.shard_count,
        "tensor_count": len(scan.tensors), "data_bytes": scan.data_bytes,
        "index_total_size": inventory.index_total_size, "dtypes": scan.dtypes,
        "unreadable_shards": scan.unreadable, "missing_shards": inventory.missing_shards,
        "index_mismatches": scan.index_mismatches[:50], "fp8": is_fp8,
    }
    found_id, id_source = hf_id.find(directory, config, settings.model_id)
    config_block = asdict(facts)
    config_block["quantization_note"] = quantization_note
    record = TriageRecord(
        schema=SCHEMA,
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model={"name": name, "path": str(directory), "requested": settings.model},
        hf_id=found_id, hf_id_source=id_source,
        inventory={k: v for k, v in asdict(inventory).items() if k != "problems"}
        | {"file_count": len(inventory.files), "total_bytes": sum(f["bytes"] for f in inventory.files)},
        config=config_block,
        registry=asdict(registry),
        trust_remote_code=trust,
        weights=weights,
        layers={"config": facts.num_hidden_layers, "weights": in_weights, "trimmed": trimmed},
        coverage=coverage.to_dict(),
        mtp=asdict(mtp),
        features=feature_list,
        feature_facts=rule_facts,
        parallel=asdict(plan),
        # what `make status` compares to say the checkpoint changed since (`make triage` replaces
        # it with the whole `make context` record, which holds the same fingerprint)
        context={"model": {"path": str(directory), "fingerprint": checkpoint_fingerprint(directory)}},
        versions=versions,
        warnings=warnings,
        errors=errors,
        next_commands=next_commands(model_arg, {"tp": plan.tp, "trust_remote_code": trust["needed"] and
                                           "--trust-remote-code" not in profile.flags,
                                           "blocking": blocking, "has_weights": has_weights,
                                           "features": feature_list, "adaptation": adaptation}),
        exit_code=exit_code,
        elapsed_s=0.0,
        adaptation=adaptation,
    )
    record.elapsed_s = round(time.monotonic() - started, 3)
    return record


# --- writing --------------------------------------------------------------------------------

def triage_path(model: Model) -> Path:
    return model.runs_dir / "triage.json"


def write_record(record: TriageRecord, path: Path) -> Path | None:
    """Atomic write; an existing triage.json is kept as triage.<UTC stamp>.json. Returns that copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = None
    if path.exists():
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kept = path.with_name(f"triage.{stamp}.json")
        counter = 1
        while kept.exists():
            kept = path.with_name(f"triage.{stamp}-{counter}.json")
            counter += 1
        os.link(path, kept)  # a hard link: the old record stays as it was, at no cost
    ev.atomic_write_json(path, record.to_dict())
    return kept


# --- triage facts for the steps that follow -------------------------------------------------

@dataclass
class TriageFacts:
    """What the gates need from triage: the facts the rules read, and the record they came from."""

    facts: dict[str, Any]
    assessments: dict[str, dict[str, Any]]
    versions: dict[str, str | None]
    source: str  # "triage.json" | "in-process triage (no registry)"
    path: str | None
    created_utc: str | None
    parallel: dict[str, Any] = field(default_factory=dict)  # triage's TP plan for this box
    warnings: list[str] = field(default_factory=list)


def _mtime_utc(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stale_because(record: dict[str, Any], model_dir: Path, backend: str, versions: dict[str, str | None]) -> str:
    """Why a triage.json no longer describes this checkpoint on this box ('' when it still does)."""
    if (record.get("model") or {}).get("path") != str(model_dir):
        return f"it describes {(record.get('model') or {}).get('path')}"
    if (record.get("parallel") or {}).get("backend") != backend:
        return f"it was made for backend {(record.get('parallel') or {}).get('backend')}"
    if "feature_facts" not in record:
        return "it was written by an older toolkit (no feature_facts)"
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


def current_facts(settings: Settings, model: Model, backend: str,
                  out: Callable[[str], None] | None = None) -> TriageFacts:
    """triage.json when it is fresh; else triage in-process without the registry (and written)."""
    versions = profiles.load(backend).facts_box(sourcetree.implementation_roots(settings)).versions()
    path = triage_path(model)
    record: dict[str, Any] | None = None
    why = "there is no triage.json"
    if path.is_file():
        try:
            record = ev.read_json(path)
            why = stale_because(record, model.checkpoint, backend, versions)
        except (OSError, ValueError) as exc:
            why = f"triage.json is unreadable ({exc})"
        if why:
            record = None
    if record is not None:
        source, where = "triage.json", str(path)
    else:
        if out:
            out(f"  triage: {why}; triaging in-process (no registry)")
        fresh = triage(settings, model, registry=False, backend=backend)
        fresh.registry["method"] = IN_PROCESS  # `make status` asks for the full triage
        record = fresh.to_dict()
        # Written so the next gate reads it at once; it says itself that the registry was skipped,
        # and `make triage` keeps it as triage.<stamp>.json when it writes a full one.
        write_record(fresh, path)
        source, where = f"in-process triage (no registry): {why}", str(path)
    assessments = {f["id"]: f for f in record.get("features") or []}
    return TriageFacts(facts=record["feature_facts"], assessments=assessments,
                       versions=record.get("versions") or versions, source=source, path=where,
                       created_utc=record.get("created_utc"), parallel=record.get("parallel") or {},
                       warnings=list(record.get("warnings") or []))
