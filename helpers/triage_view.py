"""The terminal view of a triage record: one aligned row per fact (Chinese label, key, value),
then warnings, errors and the next commands."""

from __future__ import annotations

import json
from typing import Any

from helpers import features as feature_rules


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**30:.2f} GiB"


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def label_table(rows: list[tuple[str, str, str]]) -> list[str]:
    """`中文 key  value` lines, the values aligned (a CJK character is two columns wide)."""
    if not rows:
        return []

    def wide(text: str) -> int:
        return len(text) + sum(1 for ch in text if ord(ch) > 0x2E7F)

    width = max(wide(f"{zh} {key}") for zh, key, _ in rows)
    return [f"{zh} {key}{' ' * (width - wide(f'{zh} {key}'))}  {value}" for zh, key, value in rows]


def render_table(record: dict[str, Any], rules: feature_rules.RuleSet | None = None) -> str:
    rules = rules or feature_rules.load_rules()
    c, inv, w, cov, reg = record["config"], record["inventory"], record["weights"], record["coverage"], record["registry"]
    par, mtp = record["parallel"], record["mtp"]
    rows: list[tuple[str, str, str]] = []

    def row(zh: str, key: str, value: Any) -> None:
        rows.append((zh, key, str(value)))

    row("模型", "model", f"{record['model']['name']}  ({record['model']['path']})")
    row("HF id", "hf_id", f"{record.get('hf_id') or '(none: the directory name is used)'}  "
        f"({record.get('hf_id_source') or '?'})")
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
    held = record.get("layers") or {}
    if held.get("weights") is not None:
        row("权重层数", "layers_in_weights", f"{held['weights']} of {held['config']}"
            + (" (trimmed checkpoint: reduced-layers, never signs off)" if held.get("trimmed") else ""))
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
    from helpers.adapt.assess import view_lines  # the adaptation block, when triage wrote one

    lines = label_table(rows) + view_lines(record.get("adaptation"))
    for warning in record["warnings"]:
        lines.append(f"警告 warning: {warning}")
    for error in record["errors"]:
        lines.append(f"错误 error: {error}")
    lines.append("下一步 next:")
    for command in record["next_commands"]:
        lines.append(f"  {command['command']}")
    return "\n".join(lines)
