"""Deliverables from recorded evidence: no number is re-typed, every claim names its log.

Inputs (all under RUNS_DIR/<model>/, each read by ONE adapter below so a key rename upstream is
a one-line fix here): triage.json, <stamp>-<step>/evidence.json (+ command.sh, requests.jsonl,
serve.log), matrix.json, capacity.json, latest-accuracy/accuracy.json. A missing file or key is
rendered as "not run", never guessed.

Outputs (default RUNS_DIR/<model>/deliverables/): report.zh.md, runbook.zh.md,
issue-comment.zh.md, tests/e2e/models/configs/<Model>.yaml and, when DELIVERY_REPO is set,
docs/source/tutorials/models/<Model>.md in that repo's docs syntax (MkDocs or MyST, detected).
The paths under deliverables/ mirror the delivery repo, so `make deliver` only copies.
All prose lives in templates/*.j2; this module passes data.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import evidence as ev
from helpers.e2e import E2E_DIR, TUTORIAL_DIR, e2e_config, hardware_label, render_e2e_yaml, serve_block
from helpers.model import Model
from helpers.runs import NOT_RUN, dig as _dig, is_serving_run, latest, passing_modes, read_runs
from helpers.settings import Settings
from helpers.templating import render



# ============================================================================ adapters
# Each adapter reads one producer's file and returns a plain dict with fixed keys (None / empty
# when absent). Templates and the rest of this module only ever see these shapes.

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
                "max_position_embeddings": None, "series": None, "hf_id": None}
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
        "hf_id": raw.get("hf_id") or cfg.get("_name_or_path"),
    }


def _row(value: Any) -> dict[str, Any]:
    """One matrix ROW (schemas.md) with every key present."""
    value = value if isinstance(value, dict) else {}
    return {"status": value.get("status") or NOT_RUN, "category4": value.get("category4") or "not-run",
            "evidence_line": value.get("evidence_line"), "log": value.get("log"),
            "run_dir": value.get("run_dir"), "stage": value.get("stage"), "reason": value.get("reason")}


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
                "practical_source": None, "headline": None, "cells": []}
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
            "headline": raw.get("headline"), "cells": cells}


def adapt_accuracy(model_dir: Path) -> dict[str, Any]:
    """latest-accuracy/accuracy.json (helpers/accuracy.py, `make accuracy`)."""
    path = model_dir / "latest-accuracy" / "accuracy.json"
    raw = _read(path)
    if not isinstance(raw, dict):
        return {"present": False, "verdict": None, "reason": None, "tasks": [], "lm_eval_version": None,
                "base_url": None, "serve": {}, "run_dir": None, "log": None, "apply_chat_template": False,
                "fewshot_as_multiturn": False, "backend": None, "finished_at": None}
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
            "backend": raw.get("backend"), "finished_at": raw.get("finished_at")}


# ============================================================================ context
def build_context(settings: Settings, model: Model, *, docs_kind: str | None = None,
                  delivery_changes: list[str] | None = None) -> dict[str, Any]:
    model_dir = model.runs_dir
    triage = adapt_triage(model_dir)
    matrix = adapt_matrix(model_dir)
    capacity = adapt_capacity(model_dir)
    accuracy = adapt_accuracy(model_dir)
    runs = read_runs(model_dir)
    modes = passing_modes(runs)
    stage_a = latest(runs, lambda r: r.step == "stage-a")
    stage_b = latest(runs, lambda r: r.step == "stage-b")
    stage_b_pass = latest(runs, lambda r: r.stage == "b" and r.verdict == "PASS" and is_serving_run(r))
    primary = modes.primary
    multimodal = bool(triage.get("multimodal")) if triage["present"] else bool(
        primary and primary.data.get("multimodal"))
    backend = (primary or stage_b or stage_a).data.get("backend") if (primary or stage_b or stage_a) else None
    versions = (primary or stage_b or stage_a).data.get("versions") or {} if (primary or stage_b or stage_a) else {}
    port = None
    host = "127.0.0.1"
    if primary:
        argv = primary.argv
        if "--port" in argv:
            port = argv[argv.index("--port") + 1]
        if "--host" in argv:
            host = argv[argv.index("--host") + 1]
            host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    name = model.name
    fallback_cmds = []
    for kind, run, flag_env in (("eager", modes.eager, ("--enforce-eager", None)),
                                ("dynamo", modes.dynamo, (None, "TORCHDYNAMO_DISABLE=1"))):
        if kind == "dynamo" and not multimodal and run is None:
            continue
        if run is not None:
            fallback_cmds.append({"kind": kind, "verified": True, "lines": run.command_lines(),
                                  "run_dir": str(run.run_dir), "log": str(run.log)})
        elif primary is not None:
            fallback_cmds.append({"kind": kind, "verified": False,
                                  "lines": _with_fallback(primary.command_lines(), *flag_env),
                                  "run_dir": None, "log": None})
    all_views = [r.view() for r in runs]
    log_paths = sorted({v["log"] for v in all_views if v["log_exists"]})
    if accuracy["present"] and Path(accuracy["log"]).is_file():
        log_paths.append(accuracy["log"])
    features = matrix["features"] if matrix["present"] else {}
    feature_rows = []
    for fid in ("aclgraph", "ep", "flashcomm1", "mtp", "multimodal"):
        row = features.get(fid) or _row(None)
        triage_feature = triage["features"].get(fid) or {}
        feature_rows.append({"id": fid, **row, "triage_category": triage_feature.get("category"),
                             "triage_evidence": triage_feature.get("evidence")})
    extra_rows = [{"id": fid, **row, "triage_category": None, "triage_evidence": None} for fid, row in features.items()
                  if fid not in {r["id"] for r in feature_rows}]
    theoretical = capacity.get("theoretical_max_len") or triage.get("max_position_embeddings")
    ctx = {
        "model": name,
        "evidence_architectures": next((r.data.get("architectures") for r in reversed(runs)
                                        if r.data.get("architectures")), None) or [],
        "model_id": settings.model_id or triage.get("hf_id") or name,
        "generated_at": max([r.data.get("finished_at") or r.data.get("started_at") or "" for r in runs]
                            + [accuracy.get("finished_at") or ""]) or None,
        "runs_dir": str(model_dir),
        "backend": backend,
        "on_npu": backend == "ascend",
        "versions": versions,
        "vllm_ascend_version": versions.get("vllm-ascend"),
        "multimodal": multimodal,
        "hardware": hardware_label(triage.get("series")) if backend == "ascend" else None,
        "triage": triage,
        "matrix": matrix,
        "capacity": capacity,
        "accuracy": accuracy,
        "stages": matrix["stages"],
        "dummy_vs_real": matrix["dummy_vs_real"],
        "false_ready": matrix["false_ready"],
        "ladder": matrix["ladder"],
        "matrix_source": "matrix.json",
        "feature_rows": feature_rows,
        "extra_feature_rows": extra_rows,
        "theoretical_max_len": theoretical,
        "practical_max_len": capacity.get("practical_max_len"),
        "runs": all_views,
        "failures": [v for v in all_views if v["verdict"] == "FAIL"],
        "stage_a": stage_a.view() if stage_a else None,
        "stage_b": stage_b.view() if stage_b else None,
        "stage_b_signed_off": stage_b_pass is not None,
        "primary": primary.view() if primary else None,
        "primary_lines": primary.command_lines() if primary else [],
        "primary_is_fallback": modes.primary_is_fallback,
        "fallback_cmds": fallback_cmds,
        "serve_block": serve_block(primary.argv) if primary else {},
        "port": port,
        "host": host,
        "text_payload": _pretty(primary.payload("text")) if primary else None,
        "image_payload": _pretty(primary.payload("image")) if primary and multimodal else None,
        "served_name": primary.data.get("served_name") if primary else None,
        "log_paths": log_paths,
        "docs": docs_kind,
        "delivery_changes": delivery_changes,
    }
    ctx["e2e"] = e2e_config(ctx)
    return ctx


def _with_fallback(lines: list[str], flag: str | None, env: str | None) -> list[str]:
    """A not-yet-verified fallback derived from the primary command (the report says so)."""
    out = list(lines)
    if env:
        key, _, value = env.partition("=")
        cmd = next((i for i, l in enumerate(out) if not l.startswith(("export ", "cd "))), len(out))
        out.insert(cmd, f"export {key}={shlex.quote(value)}")
    if flag and out:
        out[-1] = out[-1] + " \\"
        out.append(f"  {flag}")
    return out


def _pretty(payload: dict[str, Any] | None) -> str | None:
    return json.dumps(payload, ensure_ascii=False) if payload else None


# ============================================================================ rendering
def tidy_markdown(text: str) -> str:
    """At most one blank line in a row (markdownlint MD012), one newline at the end."""
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


@dataclass
class RenderResult:
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    signed_off: bool = False

    def summary_lines(self) -> list[str]:
        lines = [f"report: {'Stage B evidence present' if self.signed_off else 'NO passing Stage B evidence: the report says so first'}"]
        lines += [f"  {name}: {path}" for name, path in self.files.items()]
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def render_all(settings: Settings, model: Model, out_dir: Path | None = None, *, docs_kind: str | None = None,
               delivery_changes: list[str] | None = None) -> RenderResult:
    """Render every deliverable from the evidence of `model` (its matrix.json included: `make
    report` writes that first). docs_kind (mkdocs | myst, from the delivery repo) decides the
    tutorial's syntax; without it no tutorial is written."""
    ctx = build_context(settings, model, docs_kind=docs_kind, delivery_changes=delivery_changes)
    out = Path(out_dir) if out_dir else model.runs_dir / "deliverables"
    result = RenderResult(out, signed_off=ctx["stage_b_signed_off"])

    def write(name: str, relative: str, text: str) -> None:
        if relative.endswith(".md"):
            text = tidy_markdown(text)
        path = out / relative
        ev.atomic_write_text(path, text)
        result.files[name] = path

    write("report", "report.zh.md", render("report.zh.md.j2", **ctx))
    write("runbook", "runbook.zh.md", render("runbook.zh.md.j2", **ctx))
    write("issue comment", "issue-comment.zh.md", render("issue_comment.zh.md.j2", **ctx))
    if ctx["e2e"] is not None:
        write("e2e config", f"{E2E_DIR}/{ctx['model']}.yaml", render_e2e_yaml(ctx["e2e"]))
    else:
        result.notes.append("e2e config: not written (no passing accuracy.json; run `make accuracy`)")
    if docs_kind is not None:
        write("tutorial", f"{TUTORIAL_DIR}/{ctx['model']}.md", render("tutorial.md.j2", **ctx))
    else:
        result.notes.append("tutorial: not written (set DELIVERY_REPO: its docs system, MkDocs or MyST, decides the syntax)")
    ev.atomic_write_json(out / "deliverables.json", {
        "model": ctx["model"], "generated_at": ctx["generated_at"], "docs": ctx["docs"],
        "stage_b_signed_off": ctx["stage_b_signed_off"],
        "files": {name: str(path.relative_to(out)) for name, path in result.files.items()},
        "log_paths": ctx["log_paths"],
    })
    return result
