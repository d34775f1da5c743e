"""The parallel plan of a model on this box: how many NPUs, which Atlas series, which TP the
workflow would use, whether the weights fit, and what replicated KV heads mean for the model."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from helpers import box
from helpers import checkpoint as ckpt
from helpers.settings import Settings

# TP the workflow uses per Atlas series, and HBM per logical device when npu-smi does not say.
SERIES_TP = {"A2": 8, "A3": 16}
SERIES_HBM_GIB = {"A2": 64, "A3": 64}
# vLLM's default gpu_memory_utilization: what is left after weights holds KV cache and activations.
MEMORY_UTILISATION = 0.9


@dataclass
class ParallelPlan:
    backend: str
    npu_count: int
    npu_source: str
    chip: str | None
    series: str | None
    series_source: str          # torch_npu soc version (as vllm-ascend decides) or the npu-smi chip name
    soc_version: int | None
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


def plan_parallel(settings: Settings, backend: str, facts: ckpt.ConfigFacts, weight_bytes: int | None,
                  weight_source: str, default_tp: int, npu_smi: tuple[str | None, str],
                  soc_version: int | None = None) -> tuple[ParallelPlan, list[str]]:
    """npu_smi: (`npu-smi info` text or None, where it came from) and soc_version
    (torch_npu.npu.get_soc_version()), both from the profile's box."""
    warnings: list[str] = []
    npu_info: dict[str, Any] = {"devices": 0, "chip": None, "series": None, "hbm_gib": None}
    smi_text, smi_source = npu_smi
    if smi_text:
        npu_info = box.parse_npu_smi(smi_text)
    count, count_source = npu_info["devices"], smi_source if smi_text else smi_source
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    if visible:
        count = len([d for d in visible.split(",") if d.strip()])
        count_source = f"ASCEND_RT_VISIBLE_DEVICES={visible}"
    series, series_source = npu_info["series"], "npu-smi chip name" if npu_info["series"] else ""
    if box.series_of_soc(soc_version):  # what vllm-ascend itself goes by (fact soc-generation-ranges)
        series, series_source = box.series_of_soc(soc_version), f"torch_npu soc_version {soc_version}"
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
                        "models with QK norm need the local k_norm shard path")
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
                        series=series, series_source=series_source, soc_version=soc_version, hbm_gib=hbm,
                        hbm_source=hbm_source, suggested_tp=tp, tp_reason=reason, user_tp=user_tp, tp=used_tp,
                        kv_heads_replicated=replicated, weight_bytes=weight_bytes, weight_bytes_source=weight_source, weights_per_device_gib=per_device, fits=fits,
                        fit_detail=detail, min_devices=min_devices)
    return plan, warnings
