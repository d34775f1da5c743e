"""Weight coverage: checkpoint tensor names vs the parameters the architecture expects.

transformers builds the model on the meta device (no memory, no download); its own key
conversions map checkpoint names onto model names, so fused MoE experts and VL renames are
handled the way loading would. fp8 weights are checked for their scale tensors.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers import box
from helpers import evidence as ev
from helpers.checkpoint import FP8_DTYPES, QUANT_AUX, ConfigFacts, TensorInfo, mtp_tensor_names


@dataclass
class Coverage:
    status: str  # ok | incomplete | unknown | no-weights
    method: str
    reason: str = ""
    model_class: str | None = None
    expected_count: int = 0
    expected_params: int = 0
    checkpoint_count: int = 0
    matched_count: int = 0
    missing: list[str] = field(default_factory=list)
    incomplete: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored_unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[dict[str, Any]] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    mtp_tensors: int = 0
    quant_aux: int = 0
    fp8_weights: int = 0
    fp8_unpaired: list[str] = field(default_factory=list)
    orphan_scales: list[str] = field(default_factory=list)

    def to_dict(self, limit: int = 50) -> dict[str, Any]:
        data = asdict(self)
        for key in ("missing", "unexpected", "ignored_unexpected", "fp8_unpaired", "orphan_scales"):
            data[f"{key}_count"] = len(data[key])
            data[key] = data[key][:limit]
        for key in ("incomplete", "shape_mismatch"):
            data[f"{key}_count"] = len(data[key])
            data[key] = data[key][:limit]
        return data


@dataclass
class ExpectedModel:
    model_class: str
    shapes: dict[str, tuple[int, ...]]
    tied: dict[str, str]  # target -> source, only when the config ties them
    renamer: Any  # callable(name) -> (model_name, converter_key or None)
    siblings: dict[str, list[str]]  # converter key -> extra target suffix replacements
    ignore_unexpected: list[str]


def fp8_pairing(tensors: dict[str, TensorInfo]) -> tuple[int, list[str], list[str]]:
    """fp8 weights and their scales: (fp8 weight count, weights without a scale, scales without a weight)."""
    fp8 = [n for n, t in tensors.items() if t.dtype in FP8_DTYPES and n.endswith(".weight")]
    unpaired = [n for n in fp8 if n + "_scale_inv" not in tensors and n + "_scale" not in tensors]
    orphans = [n for n in tensors if re.search(r"\.weight_scale(_inv)?$", n)
               and re.sub(r"_scale(_inv)?$", "", n) not in tensors]
    return len(fp8), sorted(unpaired), sorted(orphans)


def build_expected(config: dict[str, Any], facts: ConfigFacts) -> ExpectedModel:
    """Instantiate the architecture on the meta device with transformers; raises ValueError to skip.

    Never runs remote code: a model_type transformers does not know is reported as unknown.
    """
    try:
        import torch
        import transformers
        from transformers import CONFIG_MAPPING
    except Exception as exc:  # torch/transformers missing or broken
        raise ValueError(f"transformers is not importable ({type(exc).__name__})") from None
    model_type = facts.model_type
    if not model_type or model_type not in CONFIG_MAPPING:
        hint = " (custom code: needs trust_remote_code, not executed by triage)" if config.get("auto_map") else ""
        raise ValueError(f"transformers {transformers.__version__} does not know model_type {model_type!r}{hint}")
    model_class = None
    for arch in facts.architectures:
        candidate = getattr(transformers, arch, None)
        if candidate is not None and hasattr(candidate, "_from_config"):
            model_class = candidate
            break
    if model_class is None:
        raise ValueError(f"transformers {transformers.__version__} has no class for {facts.architectures}")
    # transformers normalises rope and other sections in place: hand it a copy.
    clean = copy.deepcopy({k: v for k, v in config.items() if k not in ("quantization_config", "auto_map")})
    import logging as _logging

    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    _logging.getLogger("transformers").setLevel(_logging.ERROR)
    try:
        hf_config = CONFIG_MAPPING[model_type].from_dict(clean)
        with torch.device("meta"):
            model = model_class._from_config(hf_config)
    except Exception as exc:
        raise ValueError(f"{model_class.__name__} could not be built from this config on the meta device: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        transformers.logging.set_verbosity(previous)
    state = model.state_dict()
    shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
    text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    tied: dict[str, str] = {}
    if getattr(text_config, "tie_word_embeddings", False) or getattr(hf_config, "tie_word_embeddings", False):
        declared = getattr(model, "_tied_weights_keys", None) or {}
        if isinstance(declared, dict):
            tied = {str(k): str(v) for k, v in declared.items()}
        else:  # transformers 4.x: a list of tied targets, the source is the input embedding
            tied = {str(k): "" for k in declared}
    renamings, converters = [], []
    rename_source_key = None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key

        for transform in get_model_conversion_mapping(model):
            (converters if isinstance(transform, WeightConverter) else renamings).append(transform)
    except ImportError:  # transformers 4.x: checkpoint names are model names (up to the prefix)
        pass
    prefix = getattr(model, "base_model_prefix", "") or ""
    siblings: dict[str, list[str]] = {}
    for converter in converters:
        targets = list(converter.target_patterns)
        for source in converter.source_patterns:
            siblings[source] = targets

    def renamer(name: str) -> tuple[str, str | None]:
        if rename_source_key is not None:
            return rename_source_key(name, renamings, converters, prefix or None, state)
        if name not in state and prefix and f"{prefix}.{name}" in state:
            return f"{prefix}.{name}", None
        return name, None

    ignore = [str(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    return ExpectedModel(model_class=model_class.__name__, shapes=shapes, tied=tied, renamer=renamer,
                         siblings=siblings, ignore_unexpected=ignore)


def check_coverage(tensors: dict[str, TensorInfo], expected: ExpectedModel | None, facts: ConfigFacts,
                   reason: str = "") -> Coverage:
    names = sorted(tensors)
    mtp_names, _ = mtp_tensor_names(names, facts.num_hidden_layers)
    mtp_set = set(mtp_names)
    fp8_count, unpaired, orphans = fp8_pairing(tensors)
    aux = [n for n in names if QUANT_AUX.search(n)]
    common = dict(checkpoint_count=len(names), mtp_tensors=len(mtp_names), quant_aux=len(aux),
                  fp8_weights=fp8_count, fp8_unpaired=unpaired, orphan_scales=orphans)
    if expected is None:
        return Coverage(status="unknown", method="none", reason=reason, **common)
    expected_params = sum(math.prod(s) if s else 1 for s in expected.shapes.values())
    covered: set[str] = set()
    groups: dict[str, list[str]] = {}
    group_targets: dict[str, list[str]] = {}
    unexpected, ignored, mismatches = [], [], []
    aux_set = set(aux)
    for name in names:
        if name in mtp_set or name in aux_set:
            continue
        target, converter_key = expected.renamer(name)
        if target not in expected.shapes:
            if any(re.search(p, name) for p in expected.ignore_unexpected):
                ignored.append(name)
            else:
                unexpected.append(name)
            continue
        covered.add(target)
        if converter_key is None:
            want = list(expected.shapes[target])
            have = tensors[name].shape
            if have != want:
                mismatches.append({"name": name, "checkpoint": have, "expected": want})
            continue
        groups.setdefault(target, []).append(name)
        targets = [target]
        patterns = expected.siblings.get(converter_key, [])
        if len(patterns) > 1:
            first = patterns[0]
            for other in patterns[1:]:
                sibling = target.replace(first, other)
                if sibling in expected.shapes and sibling not in targets:
                    targets.append(sibling)
        group_targets[target] = targets
        covered.update(targets)
    incomplete = []
    for target, sources in groups.items():
        want = sum(math.prod(expected.shapes[t]) for t in group_targets[target])
        have = sum(tensors[s].numel for s in sources)
        if have != want:
            incomplete.append({"name": target, "sources": len(sources), "checkpoint_numel": have,
                               "expected_numel": want})
    tied = []
    missing = []
    for name in sorted(expected.shapes):
        if name in covered:
            continue
        if name in expected.tied:
            tied.append(name)
            continue
        missing.append(name)
    problems = missing or incomplete or mismatches or unpaired
    return Coverage(status="incomplete" if problems else "ok", method="transformers-meta",
                    model_class=expected.model_class, expected_count=len(expected.shapes),
                    expected_params=expected_params, matched_count=len(covered), missing=missing,
                    incomplete=sorted(incomplete, key=lambda x: x["name"]), unexpected=unexpected,
                    ignored_unexpected=ignored, shape_mismatch=mismatches, tied=tied, reason=reason, **common)


# --- the assessment triage records, cached ----------------------------------------------------

def assessment(config: dict[str, Any], facts: ConfigFacts,
               tensors: dict[str, TensorInfo]) -> tuple[Coverage, bool | None, bool]:
    """(coverage, does transformers know the model_type, does the architecture have a k_norm)."""
    expected = None
    reason = ""
    transformers_knows: bool | None = None
    try:
        expected = build_expected(config, facts)
        transformers_knows = True
    except ValueError as exc:
        reason = str(exc)
        transformers_knows = False if "does not know model_type" in reason else None
    expects_k_norm = bool(expected and any(n.endswith("k_norm.weight") for n in expected.shapes))
    if tensors:
        return check_coverage(tensors, expected, facts, reason), transformers_knows, expects_k_norm
    params = sum(math.prod(s) if s else 1 for s in expected.shapes.values()) if expected else 0
    coverage = Coverage(status="no-weights", method="transformers-meta" if expected else "none",
                        reason=reason or "no tensors to compare", model_class=expected.model_class if expected else None,
                        expected_count=len(expected.shapes) if expected else 0, expected_params=params)
    return coverage, transformers_knows, expects_k_norm


def cached_assessment(directory: Path, config: dict[str, Any], facts: ConfigFacts, tensors: dict[str, TensorInfo],
                      cache_dir: Path) -> tuple[Coverage, bool | None, bool]:
    """`assessment`, reused while nothing it reads changed: config.json's content, the tensors'
    names, dtypes and shapes (from the headers), the installed transformers and this code. Building
    the model on the meta device imports torch and transformers (seconds); a repeated triage, or
    another checkpoint of the same layout, skips it."""
    layout = hashlib.sha256(json.dumps(sorted((name, info.dtype, info.shape) for name, info in tensors.items()))
                            .encode()).hexdigest()
    key = {"config": hashlib.sha256((directory / "config.json").read_bytes()).hexdigest(),
           "tensors": layout,
           "transformers": box.package_version("transformers"),
           "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}

    def compute() -> dict[str, Any]:
        coverage, knows, k_norm = assessment(config, facts, tensors)
        return {"coverage": asdict(coverage), "transformers_knows": knows, "expects_k_norm": k_norm}

    data = ev.cached_json(cache_dir, "coverage", key, compute)
    return Coverage(**data["coverage"]), data["transformers_knows"], data["expects_k_norm"]
