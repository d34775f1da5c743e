"""The inputs of the deliverables, each read by ONE adapter so a key rename upstream is a one-line
fix here: triage.json, matrix.json, capacity.json, latest-accuracy/accuracy.json, changes.json
(`make changes`: the code changes in the two implementation roots) and deliverables/deliver.json
(the commit `make deliver` made). Each adapter returns a plain dict with fixed keys (None / empty
when absent); a missing file is "not run", never guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import changeset
from helpers import evidence as ev
from helpers.e2e import DELIVER_RECORD
from helpers.runs import NOT_RUN, dig as _dig


def _read(path: Path) -> Any:
    try:
        return ev.read_json(path)
    except (OSError, ValueError):
        return None


def adapt_triage(model_dir: Path) -> dict[str, Any]:
    """triage.json (helpers/triage.py). Reads both the nested shape of the triage branch
    (config{...}, model{name,path}, features[list], parallel{...}) and the flat shape of
    notes/schemas.md (architectures, moe, multimodal, features{id: {status, evidence}})."""
    raw = _read(model_dir / "triage.json")
    if not isinstance(raw, dict):
        return {"present": False, "features": {}, "warnings": [], "errors": [], "multimodal": None,
                "max_position_embeddings": None, "series": None, "hf_id": None, "hf_id_source": None,
                "layers": {}}
    cfg = raw.get("config") if isinstance(raw.get("config"), dict) else raw
    model = raw.get("model")
    moe = cfg.get("moe", raw.get("moe"))
    mm = cfg.get("multimodal", raw.get("multimodal"))
    quant = cfg.get("quantization", raw.get("quantization"))
    mtp = raw.get("mtp") if isinstance(raw.get("mtp"), dict) else {"status": raw.get("mtp_status") or raw.get("mtp")}
    features: dict[str, dict[str, Any]] = {}
    listed = raw.get("features") or {}
    items = listed.items() if isinstance(listed, dict) else ((f.get("id") or f.get("name"), f) for f in listed)
    for key, value in items:
        if key and isinstance(value, dict):
            features[str(key).lower()] = {"category": value.get("category") or value.get("status"),
                                          "evidence": value.get("evidence"), "name": value.get("name") or key}
    parallel = raw.get("parallel") or raw.get("plan") or {}
    return {
        "present": True,
        "name": _dig(model, "name") if isinstance(model, dict) else model,
        "path": _dig(model, "path") if isinstance(model, dict) else raw.get("model_path"),
        "architectures": cfg.get("architectures") or [],
        "model_type": cfg.get("model_type"),
        "torch_dtype": cfg.get("torch_dtype"),
        "quantization": (quant.get("method") or "yes") if isinstance(quant, dict) else quant,
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "num_hidden_layers": cfg.get("num_hidden_layers"),
        "num_attention_heads": cfg.get("num_attention_heads"),
        "num_key_value_heads": cfg.get("num_key_value_heads"),
        "moe": moe.get("is_moe") if isinstance(moe, dict) else bool(moe),
        "num_experts": moe.get("num_experts") if isinstance(moe, dict) else cfg.get("num_experts"),
        "multimodal": mm.get("is_multimodal") if isinstance(mm, dict) else bool(mm),
        "mtp_status": mtp.get("status"),
        "mtp_evidence": mtp.get("evidence"),
        "registered": _dig(raw, "registry", "status"),
        "tp": parallel.get("tp"),
        "npus": parallel.get("npu_count", parallel.get("npus")),
        "series": parallel.get("series"),
        "features": features,
        "warnings": list(raw.get("warnings") or []),
        "errors": list(raw.get("errors") or []),
        "hf_id": raw.get("hf_id"),
        "hf_id_source": raw.get("hf_id_source") or ("triage.json:hf_id" if raw.get("hf_id") else None),
        "layers": raw.get("layers") or {},
    }


def empty_row() -> dict[str, Any]:
    """A matrix row of a feature never run."""
    return _row(None)


def _row(value: Any) -> dict[str, Any]:
    """One matrix ROW (schemas.md) with every key present."""
    value = value if isinstance(value, dict) else {}
    return {"status": value.get("status") or NOT_RUN, "category4": value.get("category4") or "not-run",
            "evidence_line": value.get("evidence_line"), "log": value.get("log"),
            "run_dir": value.get("run_dir"), "stage": value.get("stage"), "reason": value.get("reason"),
            "layers": value.get("layers") or {}, "line_no": value.get("line_no"),
            "decided_by": value.get("decided_by")}


def adapt_matrix(model_dir: Path) -> dict[str, Any]:
    """matrix.json (helpers/matrix.py, `make matrix`)."""
    raw = _read(model_dir / "matrix.json")
    if not isinstance(raw, dict):
        return {"present": False, "stages": {}, "features": {}, "dummy_vs_real": [], "false_ready": [], "ladder": []}
    return {
        "present": True,
        "generated_at": raw.get("generated_at"),
        "stages": {name: _row(row) for name, row in (raw.get("stages") or {}).items() if row},
        "features": {name: _row(row) for name, row in (raw.get("features") or {}).items()},
        "dummy_vs_real": [{"check": r.get("check"), "stage_a": r.get("stage_a") or NOT_RUN,
                           "stage_b": r.get("stage_b") or NOT_RUN, "note": r.get("note") or ""}
                          for r in raw.get("dummy_vs_real") or []],
        "false_ready": [{"step": r.get("step"), "run_dir": r.get("run_dir"), "root_cause": r.get("root_cause"),
                         "line_no": r.get("line_no")} for r in raw.get("false_ready") or []],
        "ladder": [{"rung": r.get("rung"), "verdict": r.get("verdict"), "run_dir": r.get("run_dir"),
                    "category": r.get("category")} for r in raw.get("ladder") or []],
    }


def adapt_capacity(model_dir: Path) -> dict[str, Any]:
    """capacity.json (helpers/capacity.py, `make capacity`)."""
    raw = _read(model_dir / "capacity.json")
    if not isinstance(raw, dict):
        return {"present": False, "theoretical_max_len": None, "practical_max_len": None,
                "practical_source": None, "headline": None, "headline_zh": None, "cells": [], "serve_from": None,
                "tested_max_model_len": None}
    cells = []
    for cell in raw.get("cells") or []:
        metrics = cell.get("metrics") or {}
        cells.append({"max_num_seqs": cell.get("max_num_seqs"), "max_model_len": cell.get("max_model_len"),
                      "verdict": cell.get("verdict") or NOT_RUN, "run_dir": cell.get("run_dir"),
                      "kv_cache_tokens": cell.get("kv_cache_tokens"), "max_concurrency": cell.get("max_concurrency"),
                      "completed": cell.get("completed"), "failed": cell.get("failed"),
                      "output_throughput": metrics.get("output_throughput"),
                      "mean_ttft_ms": metrics.get("mean_ttft_ms"), "mean_tpot_ms": metrics.get("mean_tpot_ms")})
    return {"present": True, "theoretical_max_len": raw.get("theoretical_max_len"),
            "practical_max_len": raw.get("practical_max_len"), "practical_source": raw.get("practical_source"),
            "headline": raw.get("headline"), "headline_zh": raw.get("headline_zh"), "cells": cells,
            "serve_from": raw.get("serve_from"), "tested_max_model_len": raw.get("tested_max_model_len")}


def adapt_accuracy(model_dir: Path) -> dict[str, Any]:
    """latest-accuracy/accuracy.json (helpers/accuracy.py, `make accuracy`)."""
    path = model_dir / "latest-accuracy" / "accuracy.json"
    raw = _read(path)
    if not isinstance(raw, dict):
        return {"present": False, "verdict": None, "reason": None, "tasks": [], "lm_eval_version": None,
                "base_url": None, "serve": {}, "run_dir": None, "log": None, "apply_chat_template": False,
                "fewshot_as_multiturn": False, "backend": None, "finished_at": None, "serve_from": None,
                "server_run_dir": None}
    run_dir = path.resolve().parent
    tasks = [{"name": t.get("name"), "num_fewshot": t.get("num_fewshot"), "limit": t.get("limit"),
              "samples": t.get("samples"),
              "metrics": [{"name": k, "value": v} for k, v in (t.get("metrics") or {}).items()]}
             for t in raw.get("tasks") or []]
    return {"present": True, "verdict": raw.get("verdict"), "reason": raw.get("reason"), "tasks": tasks,
            "lm_eval_version": raw.get("lm_eval_version"), "base_url": raw.get("base_url"),
            "serve": raw.get("serve") or {}, "run_dir": str(run_dir),
            "log": str(run_dir / _dig(raw, "lm_eval", "log", default="lm_eval.log")),
            "apply_chat_template": raw.get("apply_chat_template", False),
            "fewshot_as_multiturn": raw.get("fewshot_as_multiturn", False),
            "backend": raw.get("backend"), "finished_at": raw.get("finished_at"),
            "serve_from": raw.get("serve_from"), "server_run_dir": _dig(raw, "server", "run_dir")}


def adapt_changes(model_dir: Path) -> dict[str, Any]:
    """changes.json (`make changes`), split the way the delivery treats the files: vllm-ascend
    ones go into the commit, vLLM ones need a vLLM change (a patch), files outside the minimal
    set stay out."""
    changes = changeset.read(model_dir)

    def rows(files: list[changeset.ChangedFile]) -> list[dict[str, Any]]:
        return [{"root": f.root, "path": f.path, "status": f.status, "kind": f.kind} for f in files]

    return {"present": changes.present, "path": str(changes.source),
            "roots": {name: {"path": str(r.path) if r.path else None, "head": r.head, "base": r.base}
                      for name, r in changes.roots.items()},
            "ascend": rows(changes.of_root(changeset.ASCEND)), "vllm": rows(changes.of_root(changeset.VLLM)),
            "outside": rows(changes.outside()), "registry": changes.registry, "verdict": changes.verdict}


def adapt_delivery(model_dir: Path) -> dict[str, Any]:
    """deliverables/deliver.json: the one signed commit `make deliver` made."""
    raw = _read(model_dir / DELIVER_RECORD)
    if not isinstance(raw, dict) or not raw.get("commit"):
        return {"present": False, "commit": None, "title": None, "repo": None, "branch": None, "mode": None,
                "files": [], "vllm_patch": None, "vllm_files": [], "left_out": [], "at": None}
    return {"present": True, "commit": raw["commit"], "title": raw.get("title"), "repo": raw.get("repo"),
            "branch": raw.get("branch"), "mode": raw.get("mode"), "files": list(raw.get("files") or []),
            "vllm_patch": raw.get("vllm_patch"), "vllm_files": list(raw.get("vllm_files") or []),
            "left_out": list(raw.get("left_out") or []), "at": raw.get("at")}
