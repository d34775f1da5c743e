"""`make matrix`: the feature matrix of one model from recorded evidence only.

Reads RUNS_DIR/<model>/latest-<step>/evidence.json (and every run's evidence.json for false-ready
cases, latest-ladder/ladder.json for the ladder), never starts anything, and writes matrix.json
(schema in the project notes; key names are a contract with the report renderer) and matrix.md
(templates/matrix.md.j2). A feature never run shows as NOT_RUN.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import evidence as ev
from helpers import layers, runs
from helpers.catalog import load_catalog
from helpers.features import load_specs
from helpers.model import Model
from helpers.starts.cells import newest as newest_deciding
from helpers.templating import render
from helpers.verdict import signoff

FEATURES = ("aclgraph", "ep", "flashcomm1", "mtp", "multimodal", "eager", "dynamo-fallback", "text-only")
# The workflow's default feature set (make all-features); the rest are isolation switches.
DEFAULT_SET = ("aclgraph", "ep", "flashcomm1", "mtp", "multimodal")
GATE_STEPS = ("ep", "flashcomm1", "mtp", "eager", "dynamo-fallback", "text-only")
# Steps whose graph check can stand for ACLGraph (every non-eager stage run).
GRAPH_STEPS = ("stage-b", "stage-a", "ep", "flashcomm1", "mtp", "dynamo-fallback", "text-only", "ladder-reproduce")
# The ladder's rung runs of the isolation switches (step ladder-<rung>): the same evidence as the gate's.
LADDER_OF = {"eager": "ladder-eager", "dynamo-fallback": "ladder-dynamo-disable", "text-only": "ladder-text-only"}
CATEGORY4 = {
    "PASS": "supported-verified",
    "ACCEPTED": "accepted-unverified",  # the server took the option; the log cannot show its effect
    "FAIL": "failed",
    "INTERRUPTED": "failed",
    "NOT_APPLICABLE": "not-applicable",
    "CHECKPOINT_MISSING": "checkpoint-missing",
    "FRAMEWORK_UNSUPPORTED": "framework-unsupported",
    "NOT_RUN": "not-run",
}
TEMPLATE = "matrix.md.j2"


def _log_path(record: dict[str, Any]) -> str | None:
    if not record.get("log") or not record.get("run_dir"):
        return None
    return str(Path(record["run_dir"]) / record["log"])


def _row(status: str, *, evidence_line: str | None = None, record: dict[str, Any] | None = None,
         reason: str | None = None, line_no: int | None = None) -> dict[str, Any]:
    """One cell; with a run, `log` and `line_no` point at the serve.log line that proves it."""
    return {"status": status, "category4": CATEGORY4.get(status, "failed"),
            "evidence_line": evidence_line,
            "log": _log_path(record) if record else None,
            "line_no": line_no,
            "run_dir": record.get("run_dir") if record else None,
            "stage": record.get("stage") if record else None,
            "reason": reason,
            # a run with fewer layers than config.json is marked: it never signs off
            "layers": layers.of_record(record).to_dict() if record else None,
            # provenance: the run (and its serve.log line) that decided this cell
            "decided_by": ({"run_dir": record.get("run_dir"), "step": record.get("step"), "line_no": line_no}
                           if record else None)}


def not_run(reason: str) -> dict[str, Any]:
    return _row("NOT_RUN", reason=reason)


def _ready_line(record: dict[str, Any]) -> int | None:
    """The serve.log line that said the server was up (`Application startup complete`)."""
    return ((record.get("log_scan") or {}).get("ready_line") or (record.get("readiness") or {}).get("ready_line")
            or None)


def _requests_line(record: dict[str, Any]) -> str:
    parts = [f"{r.get('kind')} {r.get('status')}" for r in record.get("requests") or []]
    return "; ".join(parts)


def stage_row(record: dict[str, Any] | None, step: str) -> dict[str, Any] | None:
    if record is None:
        return None
    verdict = record.get("verdict") or "FAIL"
    if verdict == "PASS":
        ready = _ready_line(record)
        line, line_no = f"ready (serve.log line {ready}); {_requests_line(record)}", ready
    else:
        cause = record.get("root_cause") or {}
        line, line_no = cause.get("text") or record.get("reason"), cause.get("line_no")
        if line_no is None and (record.get("graph") or {}).get("status") == "FAIL":
            line_no = record["graph"].get("line_no")  # a run without graph evidence: what it had
    return _row(verdict, evidence_line=line, record=record, reason=record.get("reason"), line_no=line_no)


def gate_row(record: dict[str, Any] | None, step: str) -> dict[str, Any]:
    if record is None:
        return not_run(f"no recorded `make {step}` run")
    verdict = record.get("verdict") or "FAIL"
    found = record.get("feature_evidence") or {}
    line, line_no = found.get("line"), found.get("line_no")
    if line is not None and line_no is None and record.get("log"):
        line_no = _ready_line(record)  # evidence in the server's environment: the start it served
    if line is None and verdict == "PASS" and step in LADDER_OF:
        # a ladder rung ran without the gate's own check: its evidence key from the log scan
        keys = load_specs()[step].evidence
        scanned, lines = record.get("log_evidence") or {}, (record.get("log_scan") or {}).get("evidence_lines") or {}
        key = next((k for k in keys if scanned.get(k)), None)
        line, line_no = (str(scanned[key]), lines.get(key)) if key else (None, _ready_line(record))
    if line is None and verdict == "FAIL":
        failure = record.get("gate_failure") or record.get("root_cause") or {}
        line, line_no = failure.get("line") or failure.get("text"), failure.get("line_no")
    return _row(verdict, evidence_line=line, record=record, reason=record.get("reason"), line_no=line_no)


def _finished(record: dict[str, Any]) -> str:
    return str(record.get("finished_at") or record.get("started_at") or "")


def aclgraph_row(records: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """From the graph check of the most recent non-eager stage run that has one."""
    faults = {c for categories in load_catalog().graph_categories.values() for c in categories}
    candidates = []
    for step in GRAPH_STEPS:
        record = records.get(step)
        # a run that died capturing (or replaying) graphs never got a graph check: it still decides
        crashed = bool(record) and record.get("verdict") == "FAIL" and record.get("category") in faults
        if not record or not (record.get("graph") or crashed):
            continue
        argv = (record.get("command") or {}).get("argv") or []
        mode = (record.get("graph") or {}).get("mode", "default")
        # the profile's default graph mode only: eager, XliteGraph or torchair runs prove no ACLGraph
        if "--enforce-eager" in argv or mode != "default" or any("xlite_graph_config" in a for a in argv):
            continue
        candidates.append(record)
    if not candidates:
        return not_run("no non-eager stage run with a graph check recorded")
    record = max(candidates, key=_finished)
    if not record.get("graph"):
        cause = record.get("root_cause") or {}
        return _row("FAIL", evidence_line=cause.get("text"), record=record, line_no=cause.get("line_no"),
                    reason=f"{record.get('step')} failed in graph mode [{record.get('category')}]: {record.get('reason')}")
    graph = record["graph"]
    status = graph.get("status") or "FAIL"
    return _row(status, evidence_line=graph.get("line"), record=record, line_no=graph.get("line_no"),
                reason=graph.get("reason") or f"graph check of {record.get('step')}")


def multimodal_row(records: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The text+image request of the latest Stage B (else Stage A) run."""
    for step in ("stage-b", "stage-a"):
        record = records.get(step)
        if record is None:
            continue
        if not record.get("multimodal"):
            lines = (record.get("log_scan") or {}).get("evidence_lines") or {}
            return _row("NOT_APPLICABLE", record=record, reason="text-only model: no vision/audio config",
                        evidence_line=(record.get("log_evidence") or {}).get("architecture"),
                        line_no=lines.get("architecture"))
        image = next((r for r in record.get("requests") or [] if r.get("kind") == "image"), None)
        if image is None:
            cause = record.get("root_cause") or {}
            return _row("FAIL", record=record, reason=f"{step} sent no image request (server not ready or died first)",
                        evidence_line=cause.get("text"), line_no=cause.get("line_no"))
        # the request itself is in requests.jsonl; the log line is the start that served it
        if image.get("ok"):
            return _row("PASS", record=record, reason=f"{step}: text+image request answered", line_no=_ready_line(record),
                        evidence_line=f"image {image.get('status')}: {str(image.get('content'))[:120]!r}")
        cause = record.get("root_cause") or {}
        return _row("FAIL", record=record, reason=f"{step}: image request failed: {image.get('error')}",
                    evidence_line=f"image {image.get('status')}: {image.get('error')}",
                    line_no=cause.get("line_no") or _ready_line(record))
    return not_run("no Stage A / Stage B run recorded")


def _check_status(record: dict[str, Any] | None, check: str) -> str:
    if record is None:
        return "NOT_RUN"
    if check == "startup":
        readiness = record.get("readiness") or {}
        return "PASS" if readiness.get("state") == "ready" else "FAIL"
    if check == "graph":
        graph = record.get("graph")
        return (graph or {}).get("status") or "NOT_RUN"
    if check == "image" and not record.get("multimodal"):
        return "NOT_APPLICABLE"
    request = next((r for r in record.get("requests") or [] if r.get("kind") == check), None)
    if request is None:
        return "NOT_RUN"
    return "PASS" if request.get("ok") else "FAIL"


def dummy_vs_real(stage_a: dict[str, Any] | None, stage_b: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for check in ("startup", "text", "stream", "image", "graph"):
        a, b = _check_status(stage_a, check), _check_status(stage_b, check)
        if a == b == "PASS":
            note = "both"
        elif a == "PASS" and b == "FAIL":
            note = "disagree: dummy weights passed, real weights failed (a real-only risk: weights, dequantisation, sharding)"
        elif a == "FAIL" and b == "PASS":
            note = "disagree: Stage A failed, Stage B passed"
        elif b == "PASS":
            note = "only Stage B proved it"
        elif a == "PASS":
            note = "only Stage A (dummy) proved it; dummy evidence never signs off"
        elif a == b == "NOT_APPLICABLE":
            note = "not applicable"
        elif a == b == "FAIL":
            note = "both failed"
        else:
            note = "not proved"
        rows.append({"check": check, "stage_a": a, "stage_b": b, "note": note})
    return rows


def false_ready_cases(model_runs: Path) -> list[dict[str, Any]]:
    cases = []
    for run_dir, record in ev.iter_evidence(model_runs):
        if record.get("category") != "false-ready":
            continue
        cause = record.get("root_cause") or {}
        cases.append({"step": record.get("step"), "run_dir": str(run_dir),
                      "root_cause": cause.get("text") or record.get("reason"), "line_no": cause.get("line_no")})
    return cases


def ladder_rows(model_runs: Path) -> list[dict[str, Any]]:
    try:
        summary = json.loads((model_runs / "latest-ladder" / "ladder.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    return [{"rung": r.get("rung"), "verdict": r.get("verdict"), "run_dir": r.get("run_dir"),
             "category": r.get("category")} for r in summary.get("rungs") or []]


def capacity_summary(model_runs: Path) -> dict[str, Any] | None:
    """The capacity step's answer (capacity.json), so the matrix names the lengths too."""
    try:
        data = json.loads((model_runs / "capacity.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    keys = ("headline", "theoretical_max_len", "practical_max_len", "practical_source")
    summary = {key: data.get(key) for key in keys}
    summary["cells"] = [{k: c.get(k) for k in ("max_num_seqs", "max_model_len", "verdict", "run_dir")}
                        for c in data.get("cells") or []]
    return summary


def build_matrix(model_runs: Path, model: str, backend: str = "", accepted: str = "") -> dict[str, Any]:
    steps = ("stage-a", "stage-b", "ladder-reproduce") + GATE_STEPS + tuple(LADDER_OF.values())
    records = {step: ev.read_latest(model_runs, step) for step in steps}
    for gate, rung in LADDER_OF.items():  # the newer of the gate's own run and the ladder's rung
        found = [r for r in (records[gate], records[rung]) if r]
        records[gate] = max(found, key=_finished) if found else None
    # a feature decided by a feature-first Stage B or an isolation newer than its own gate run
    records = newest_deciding(records, model_runs, ("ep", "flashcomm1", "mtp"))
    backend = backend or next((r["backend"] for r in records.values() if r and r.get("backend")), "")
    features: dict[str, dict[str, Any]] = {"aclgraph": aclgraph_row(records)}
    for step in ("ep", "flashcomm1", "mtp"):
        features[step] = gate_row(records[step], step)
    features["multimodal"] = multimodal_row(records)
    for step in ("eager", "dynamo-fallback", "text-only"):
        features[step] = gate_row(records[step], step)
    return {
        "model": model,
        "generated_at": ev.utc_iso(),
        "backend": backend,
        "stages": {"stage-a": stage_row(records["stage-a"], "stage-a"),
                   "stage-b": stage_row(records["stage-b"], "stage-b")},
        "features": {name: features[name] for name in FEATURES},
        "dummy_vs_real": dummy_vs_real(records["stage-a"], records["stage-b"]),
        "false_ready": false_ready_cases(model_runs),
        "ladder": ladder_rows(model_runs),
        "capacity": capacity_summary(model_runs),
        "sign_off": sign_off_summary(model_runs, model, accepted),
    }


def sign_off_summary(model_runs: Path, model: str, accepted: str = "") -> dict[str, Any]:
    """Whether the evidence signs off (helpers/verdict/signoff.py: the one rule of every output)."""
    return signoff.decide(runs.read_runs(model_runs), model, accepted, model_runs).to_dict()


def exit_code(data: dict[str, Any]) -> int:
    """1 when the evidence does not sign off (helpers/verdict/signoff.py) or a feature of the
    default set failed (all-features' verdict); a feature an accepted fallback gives up is already
    in the sign-off, and the isolation switches (eager, dynamo-fallback, text-only) are diagnostics."""
    sign = data.get("sign_off") or {}
    if not sign.get("ok") and sign.get("blocked_by") != "capacity":  # capacity comes after the features
        return 1
    given = {g.get("feature") for g in sign.get("gives_up") or []}
    return 1 if any(data["features"][name]["status"] in ("FAIL", "INTERRUPTED") for name in DEFAULT_SET
                    if name not in given) else 0


def render_markdown(data: dict[str, Any]) -> str:
    return render(TEMPLATE, m=data)


def render_terminal(data: dict[str, Any]) -> str:
    lines = [f"matrix {data['model']} ({data['backend']})"]
    for name, row in data["stages"].items():
        reduced = " (reduced-layers)" if row and (row.get("layers") or {}).get("reduced") else ""
        lines.append(f"  {name:16s} {row['status'] if row else 'NOT_RUN'}{reduced}")
    for name, row in data["features"].items():
        lines.append(f"  {name:16s} {row['status']:22s} {row['category4']}")
    sign = data.get("sign_off") or {}
    lines.append(f"  sign-off: {sign.get('headline') or sign.get('missing')}")
    return "\n".join(lines)


def write_matrix(model: Model, backend: str = "", accepted: str = "") -> tuple[dict[str, Any], Path, Path]:
    model_runs = model.runs_dir
    data = build_matrix(model_runs, model.name, backend, accepted)
    json_path, md_path = model_runs / "matrix.json", model_runs / "matrix.md"
    ev.atomic_write_json(json_path, data)
    ev.atomic_write_text(md_path, render_markdown(data))
    return data, json_path, md_path
