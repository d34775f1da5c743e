"""Deliverables from recorded evidence: no number is re-typed, every claim names its log.

Inputs (all under RUNS_DIR/<model>/, each read by one adapter of helpers/render_inputs.py):
triage.json, <stamp>-<step>/evidence.json (+ command.sh, requests.jsonl, serve.log), matrix.json,
capacity.json, latest-accuracy/accuracy.json, changes.json and deliverables/deliver.json. A
missing file or key is rendered as "not run", never guessed. The documented command is the
validated feature-first one (helpers/runs.py passing_modes), or the fallback mode the engineer
accepted (ACCEPT_FALLBACK); the evidence signs off by the one rule of helpers/verdict/signoff.py.

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
from helpers.render_inputs import (adapt_accuracy, adapt_capacity, adapt_changes, adapt_delivery, adapt_matrix,
                                   adapt_triage, empty_row)
from helpers.runs import Run, latest, passing_modes, read_runs
from helpers.settings import Settings
from helpers.templating import render
from helpers.timeline.report import pictures
from helpers.verdict import signoff


# ============================================================================ context
def build_context(settings: Settings, model: Model, *, docs_kind: str | None = None) -> dict[str, Any]:
    model_dir = model.runs_dir
    triage = adapt_triage(model_dir)
    matrix = adapt_matrix(model_dir)
    capacity = adapt_capacity(model_dir)
    accuracy = adapt_accuracy(model_dir)
    runs = read_runs(model_dir)
    modes = passing_modes(runs)
    stage_a = latest(runs, lambda r: r.step == "stage-a")
    stage_b = latest(runs, lambda r: r.step == "stage-b")
    decision = signoff.decide(runs, model.name, settings.accept_fallback, model_dir)
    # an accepted fallback is the documented command; a refused one is documented nowhere
    primary = decision.run if decision.ok and decision.mode else modes.primary
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
        row = features.get(fid) or empty_row()
        triage_feature = triage["features"].get(fid) or {}
        feature_rows.append({"id": fid, **row, "triage_category": triage_feature.get("category"),
                             "triage_evidence": triage_feature.get("evidence")})
    extra_rows = [{"id": fid, **row, "triage_category": None, "triage_evidence": None} for fid, row in features.items()
                  if fid not in {r["id"] for r in feature_rows}]
    theoretical = capacity.get("theoretical_max_len") or triage.get("max_position_embeddings")
    model_id, model_id_source = (settings.model_id, "MODEL_ID") if settings.model_id else (
        (triage["hf_id"], triage["hf_id_source"]) if triage.get("hf_id") else (name, "directory-name"))
    hardware, hardware_source = _hardware(triage.get("series"), primary)
    model_path = primary.data.get("model_path") if primary else None
    ctx = {
        "model": name,
        "evidence_architectures": next((r.data.get("architectures") for r in reversed(runs)
                                        if r.data.get("architectures")), None) or [],
        "model_id": model_id,
        "model_id_source": model_id_source,
        "generated_at": max([r.data.get("finished_at") or r.data.get("started_at") or "" for r in runs]
                            + [accuracy.get("finished_at") or ""]) or None,
        "runs_dir": str(model_dir),
        "backend": backend,
        "on_npu": backend == "ascend",
        "versions": versions,
        "vllm_ascend_version": versions.get("vllm-ascend"),
        "multimodal": multimodal,
        "hardware": hardware,
        "hardware_source": hardware_source,
        "model_path": model_path,
        "model_mount": str(Path(model_path).parent) if model_path else None,
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
        "stage_b_signed_off": decision.ok,
        "sign_off_missing": decision.missing,
        "sign_off": decision.to_dict(),
        "signing": decision.run.view() if decision.run else None,
        "reduced": modes.reduced.view() if modes.reduced else None,
        "primary": primary.view() if primary else None,
        "primary_lines": primary.command_lines() if primary else [],
        "primary_is_fallback": bool(primary and signoff.mode_of(primary)),
        "fallback_cmds": fallback_cmds,
        "serve_block": serve_block(primary.argv) if primary else {},
        "port": port,
        "host": host,
        "text_payload": _pretty(primary.payload("text")) if primary else None,
        "image_payload": _pretty(primary.payload("image")) if primary and multimodal else None,
        "served_name": primary.data.get("served_name") if primary else None,
        "log_paths": log_paths,
        "docs": docs_kind,
        "changes": adapt_changes(model_dir),
        "delivery": adapt_delivery(model_dir),
    }
    ctx["e2e"] = e2e_config(ctx)
    return ctx


def commit_evidence(ctx: dict[str, Any]) -> dict[str, Any]:
    """The evidence summary of the delivery commit message (English, upstream's style)."""
    def run(view: dict[str, Any] | None) -> dict[str, Any] | None:
        if view is None:
            return None
        return {"run": Path(view["run_dir"]).name, "step": view["step"], "features": view["features_on"]}

    accuracy = ctx["accuracy"]
    return {"model_id": ctx["model_id"], "backend": ctx["backend"],
            "hardware": ctx["hardware"] if ctx["on_npu"] else None,
            "versions": {k: ctx["versions"].get(k) for k in ("vllm", "vllm-ascend") if ctx["versions"].get(k)},
            "signing": run(ctx["signing"]), "documented": run(ctx["primary"]),
            "features": [{"id": f["id"], "category4": f["category4"]} for f in ctx["feature_rows"]],
            "accuracy": ({"version": accuracy["lm_eval_version"], "tasks": accuracy["tasks"]}
                         if accuracy["present"] and accuracy["verdict"] == "PASS" else None),
            "capacity": ctx["capacity"]["headline"]}


def _hardware(series: str | None, primary: Run | None) -> tuple[str, str]:
    """The e2e YAML's `hardware`, always set: the Atlas series triage saw on the box; without one,
    the series the workflow's TP implies (A3 runs TP 16, A2 TP 8), and the report says so."""
    label = hardware_label(series)
    if label:
        return label, "triage"
    argv = primary.argv if primary else []
    tp = int(argv[argv.index("--tensor-parallel-size") + 1]) if "--tensor-parallel-size" in argv else 1
    return ("Atlas A3 Series" if tp > 8 else "Atlas A2 Series"), f"tp={tp}"


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
    missing: str = ""  # why the evidence does not sign off (one line)
    headline: str = ""  # the sign-off in the words every output uses
    evidence: dict[str, Any] = field(default_factory=dict)  # the delivery commit's evidence summary

    def summary_lines(self) -> list[str]:
        lines = [f"report: {self.headline}"]
        lines += [f"  {name}: {path}" for name, path in self.files.items()]
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def render_all(settings: Settings, model: Model, out_dir: Path | None = None, *,
               docs_kind: str | None = None) -> RenderResult:
    """Render every deliverable from the evidence of `model` (its matrix.json included: `make
    report` writes that first). docs_kind (mkdocs | myst, from the delivery repo) decides the
    tutorial's syntax; without it no tutorial is written."""
    ctx = build_context(settings, model, docs_kind=docs_kind)
    out = Path(out_dir) if out_dir else model.runs_dir / "deliverables"
    result = RenderResult(out, signed_off=ctx["stage_b_signed_off"], missing=ctx["sign_off_missing"],
                          headline=ctx["sign_off"]["headline"], evidence=commit_evidence(ctx))
    ctx["pictures"] = pictures(model.runs_dir, out)  # timeline.png, capacity.png beside the report
    if ctx["pictures"]["charts_missing"]:
        result.notes.append(f"charts: not drawn: {ctx['pictures']['charts_missing']}")

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
        "signing_run": (ctx["signing"] or {}).get("run_dir"),
        "sign_off": {k: ctx["sign_off"][k] for k in ("ok", "mode", "accepted", "headline", "gives_up")},
        "files": {name: str(path.relative_to(out)) for name, path in result.files.items()},
        "log_paths": ctx["log_paths"],
    })
    return result
