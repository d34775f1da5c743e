"""models.yaml -> the job matrix; the image's versions -> changed or not; matrix.json before and
after a run -> the job summary. Each reads and writes only files under RUNS_DIR it names."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from helpers import load_yaml
from helpers import box
from helpers import evidence as ev
from helpers.errors import UsageError
from helpers.junit import write_junit
from helpers.timeline.starts import render_text, starts_of

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PREVIOUS = "ci-previous-matrix.json"
# the CANN version, where vllm-ascend's own CI reads it (.github/workflows/_e2e_nightly_single_node.yaml@main)
CANN_INFO = "/usr/local/Ascend/ascend-toolkit/latest/*-linux/ascend_toolkit_install.info"


@dataclass
class ModelEntry:
    name: str
    path: str
    served_name: str
    tasks: str
    tp: int | str = ""     # "" = unset: triage's TP plan
    limit: int | str = ""


def load_models(path: Path) -> list[ModelEntry]:
    """The models list, checked; a wrong entry is bad input in one line."""
    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the models list {path}: {exc}".splitlines()[0],
                         "fix ci/ascend/models.yaml (see its header)") from exc
    entries = (data or {}).get("models") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{path}: no `models:` list", "add one entry per model (see the file's header)")
    models, seen = [], set()
    for number, raw in enumerate(entries, start=1):
        where = f"{path}: model {number}"
        if not isinstance(raw, dict):
            raise UsageError(f"{where} is not a mapping", "write name, path, served_name, tasks (tp, limit optional)")
        unknown = set(raw) - {f for f in ModelEntry.__dataclass_fields__}
        missing = [f for f in ("name", "path", "served_name", "tasks") if not raw.get(f)]
        if unknown or missing:
            raise UsageError(f"{where}: " + "; ".join(
                ([f"unknown keys {sorted(unknown)}"] if unknown else []) + ([f"missing {missing}"] if missing else [])),
                "keys: name, path, served_name, tasks, tp, limit")
        for key in ("tp", "limit"):
            if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 1):
                raise UsageError(f"{where}: {key} must be a positive integer, not {raw[key]!r}", f"write {key}: 1")
        if not NAME.match(str(raw["name"])) or raw["name"] in seen:
            raise UsageError(f"{where}: name {raw['name']!r} is not a unique directory name",
                             "letters, digits, dot, dash, underscore; once per list")
        seen.add(raw["name"])
        models.append(ModelEntry(**{k: (v if isinstance(v, int) else str(v)) for k, v in raw.items()}))
    return models


def matrix_output(models: list[ModelEntry]) -> str:
    """The `matrix=<json>` line for $GITHUB_OUTPUT (strategy.matrix: include)."""
    return "matrix=" + json.dumps({"include": [asdict(m) for m in models]}, separators=(",", ":"))


# ------------------------------------------------------------------ the image
def image_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = dict(box.installed_versions())
    infos = sorted(Path("/").glob(CANN_INFO.lstrip("/")))
    cann = None
    for line in (infos[0].read_text(errors="replace").splitlines() if infos else []):
        if line.startswith("version="):
            cann = line.split("=", 1)[1].strip()
    versions["cann"] = cann
    return versions


def image_changed(state: Path, *, record: bool = False) -> tuple[bool, str]:
    """(changed, one line) against the versions of the last validated image; record: this one is."""
    now = image_versions()
    try:
        before = ev.read_json(state).get("versions")
    except (OSError, ValueError, AttributeError):
        before = None
    if record:
        ev.atomic_write_json(state, {"versions": now, "validated_at": ev.utc_iso()})
    if before is None:
        return True, "no validated image recorded yet: every model runs"
    moved = [f"{name} {before.get(name)} -> {version}" for name, version in now.items() if before.get(name) != version]
    return bool(moved), ("image changed: " + ", ".join(moved)) if moved else "image unchanged since the last validated run"


# ------------------------------------------------------------------ the summary
def matrix_cells(matrix: dict[str, Any]) -> dict[str, str]:
    cells = {name: (row or {}).get("status") or "NOT_RUN" for name, row in (matrix.get("stages") or {}).items()}
    cells.update({name: (row or {}).get("status") or "NOT_RUN" for name, row in (matrix.get("features") or {}).items()})
    return cells


def remember(model_dir: Path) -> str:
    """Keep the matrix of the last run as the "before" of this one."""
    current, previous = Path(model_dir) / "matrix.json", Path(model_dir) / PREVIOUS
    if current.is_file():
        ev.atomic_write_text(previous, current.read_text(encoding="utf-8"))
        return f"ci: the matrix of {ev.read_json(current).get('generated_at')} is this run's before"
    previous.unlink(missing_ok=True)
    return f"ci: no matrix yet under {model_dir}: first run of this model"


def summary(model_dir: Path) -> str:
    """Markdown for $GITHUB_STEP_SUMMARY: the matrix, what changed since the last run, the phases."""
    model_dir = Path(model_dir)
    lines = [f"## {model_dir.name}", ""]
    try:
        matrix = ev.read_json(model_dir / "matrix.json")
    except (OSError, ValueError):
        return "\n".join(lines + ["No matrix.json: the run stopped before `make all-features` wrote it."])
    now = matrix_cells(matrix)
    lines += ["| cell | verdict |", "|---|---|"] + [f"| {name} | {status} |" for name, status in now.items()]
    try:
        before_doc = ev.read_json(model_dir / PREVIOUS)
    except (OSError, ValueError):
        before_doc = None
    lines.append("")
    if before_doc is None:
        lines.append("First run of this model: nothing to compare.")
    else:
        before = matrix_cells(before_doc)
        changed = [(name, before.get(name, "NOT_RUN"), status) for name, status in now.items()
                   if before.get(name, "NOT_RUN") != status]
        since = before_doc.get("generated_at")
        if changed:
            lines += [f"Changed since the last run ({since}):", "", "| cell | before | now |", "|---|---|---|"]
            lines += [f"| {name} | {old} | {new} |" for name, old, new in changed]
        else:
            lines.append(f"No cell changed since the last run ({since}).")
    lines += ["", "<details><summary>phases of the starts</summary>", "", "```text",
              render_text(starts_of(model_dir, last=6)), "```", "</details>"]
    return "\n".join(lines)


def matrix_junit(model_dir: Path, out: Path) -> int:
    """Every cell of matrix.json as a JUnit test case (the make steps' own JUNIT files hold one
    step each); the number of cells written."""
    try:
        matrix = ev.read_json(Path(model_dir) / "matrix.json")
    except (OSError, ValueError):
        return 0
    rows = {**(matrix.get("stages") or {}), **(matrix.get("features") or {})}
    records = [{"step": name, "verdict": (row or {}).get("status") or "NOT_RUN",
                "reason": (row or {}).get("reason") or (row or {}).get("evidence_line") or "",
                "run_dir": str(Path(row["log"]).parent) if (row or {}).get("log") else ""}
               for name, row in rows.items()]
    write_junit(out, f"matrix-{Path(model_dir).name}", records)
    return len(records)
