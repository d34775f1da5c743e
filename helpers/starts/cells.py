"""The matrix's view of the runs that decided a feature without being that feature's own gate
run: a feature-first Stage B (its `decides`: each feature with its own evidence line) and an
isolation (`decides`: the culprit, with the failing run and its root-cause line). Each view has
the shape of a gate's evidence record, so the matrix builds its cell the same way and names the
run directory and serve.log line that decided it. Data only: reads evidence, starts nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import evidence as ev


def _view(feature: str, entry: dict[str, Any], record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    source = entry.get("run_dir") or str(run_dir)
    line = {"line": entry.get("line"), "line_no": entry.get("line_no"), "key": entry.get("key"),
            "level": entry.get("level")}
    passed = entry.get("verdict") == "PASS"
    return {"step": feature, "feature": feature, "verdict": entry.get("verdict"), "category": entry.get("category"),
            "reason": entry.get("reason"), "feature_evidence": line if passed else None,
            "gate_failure": line if not passed and entry.get("line") else None,
            "run_dir": source, "log": "serve.log", "stage": record.get("stage") or "b",
            "layers": record.get("layers"), "finished_at": record.get("finished_at"),
            "decided_by": {"run_dir": str(run_dir), "step": record.get("step"),
                           "features_on": record.get("features_on") or record.get("features")}}


def decided_views(model_runs: Path) -> dict[str, dict[str, Any]]:
    """feature -> the newest run (other than its own gate) that decided it."""
    found: dict[str, dict[str, Any]] = {}
    for run_dir, record in ev.iter_evidence(model_runs):
        for feature, entry in (record.get("decides") or {}).items():
            view = _view(feature, entry, record, run_dir)
            if feature not in found or str(view["finished_at"] or "") >= str(found[feature]["finished_at"] or ""):
                found[feature] = view
    return found


def newest(records: dict[str, dict[str, Any] | None], model_runs: Path, steps: tuple[str, ...]
           ) -> dict[str, dict[str, Any] | None]:
    """records with each feature step's record replaced by a newer deciding run, when there is one."""
    views = decided_views(model_runs)
    chosen = dict(records)
    for step in steps:
        view, own = views.get(step), records.get(step)
        if view and (own is None or str(view["finished_at"] or "") >= str(own.get("finished_at") or "")):
            chosen[step] = view
    return chosen
