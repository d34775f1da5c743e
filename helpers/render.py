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

import jinja2
import yaml

from helpers import evidence as ev
from helpers.errors import UsageError
from helpers.settings import REPO_ROOT, Settings

TEMPLATES = REPO_ROOT / "templates"
E2E_SCHEMA = Path(__file__).resolve().parent / "e2e_schema.yaml"
NOT_RUN = "NOT_RUN"
FALLBACK_KINDS = ("eager", "dynamo", "text-only")
CAPACITY_PREFIX = "capacity"
TUTORIAL_DIR = "docs/source/tutorials/models"
E2E_DIR = "tests/e2e/models/configs"


# ============================================================================ adapters
# Each adapter reads one producer's file and returns a plain dict with fixed keys (None / empty
# when absent). Templates and the rest of this module only ever see these shapes.

def _read(path: Path) -> Any:
    try:
        return ev.read_json(path)
    except (OSError, ValueError):
        return None


def _dig(data: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


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


@dataclass
class Run:
    """One recorded stage/feature/ladder run (evidence.json and the files beside it)."""

    data: dict[str, Any]
    run_dir: Path

    @property
    def step(self) -> str:
        return self.data.get("step") or self.run_dir.name.split("-", 1)[-1]

    @property
    def stage(self) -> str | None:
        return self.data.get("stage")

    @property
    def verdict(self) -> str:
        return self.data.get("verdict") or ("INTERRUPTED" if self.data.get("status") == "running" else NOT_RUN)

    @property
    def log(self) -> Path:
        return self.run_dir / (self.data.get("log") or "serve.log")

    @property
    def argv(self) -> list[str]:
        return list(_dig(self.data, "command", "argv", default=[]) or [])

    @property
    def env(self) -> dict[str, str]:
        return dict(_dig(self.data, "command", "env", default={}) or {})

    @property
    def fallback_kind(self) -> str | None:
        """eager / dynamo / text-only when this run used a fallback of the ladder, else None."""
        if self.step == "text-only" or any(a.startswith("--limit-mm-per-prompt") for a in self.argv):
            return "text-only"
        if self.env.get("TORCHDYNAMO_DISABLE") == "1":
            return "dynamo"
        if "--enforce-eager" in self.argv:
            return "eager"
        return None

    def command_lines(self) -> list[str]:
        """command.sh as a terminal would take it: no shebang, comments, strict mode or exec."""
        try:
            text = (self.run_dir / "command.sh").read_text(encoding="utf-8")
        except OSError:
            return []
        lines = []
        for line in text.splitlines():
            if line.startswith("#") or line.strip() in ("set -euo pipefail", ""):
                continue
            lines.append(line[5:] if line.startswith("exec ") else line)
        return lines

    def payload(self, kind: str) -> dict[str, Any] | None:
        try:
            lines = (self.run_dir / "requests.jsonl").read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("kind") == kind and record.get("payload"):
                return record["payload"]
        return None

    def view(self) -> dict[str, Any]:
        d = self.data
        cause = d.get("root_cause") or {}
        hits = d.get("signatures") or []
        first_hint = next((h.get("hint_zh") for h in hits if isinstance(h, dict) and h.get("hint_zh")), None)
        return {
            "step": self.step, "stage": (self.stage or "?").upper(), "verdict": self.verdict,
            "category": d.get("category"), "reason": d.get("reason"), "run_dir": str(self.run_dir),
            "log": str(self.log), "log_exists": self.log.is_file(), "started_at": d.get("started_at"),
            "fallback": self.fallback_kind, "feature": d.get("feature"),
            "root_cause": ({"line_no": cause.get("line_no"), "text": cause.get("text"),
                            "sig_id": cause.get("sig_id"), "category": cause.get("category")} if cause else None),
            "hint_zh": first_hint,
            "ready_s": _dig(d, "timings", "start_to_ready_s"),
            "graph": d.get("graph") or {},
            "requests": [{"kind": r.get("kind"), "ok": r.get("ok"), "status": r.get("status"),
                          "content": (r.get("content") or "")[:40], "error": (r.get("error") or "")[:160]}
                         for r in d.get("requests") or []],
            "shell": _dig(d, "command", "shell"),
        }


def adapt_runs(model_dir: Path) -> list[Run]:
    """Every <stamp>-<step>/evidence.json under the model's directory, oldest first."""
    runs = []
    for path in sorted(model_dir.glob("*/evidence.json")):
        if path.parent.is_symlink():
            continue  # latest-<step> links point at directories listed anyway
        data = _read(path)
        if isinstance(data, dict):
            runs.append(Run(data, path.parent.resolve()))
    runs.sort(key=lambda r: (r.data.get("started_at") or "", r.run_dir.name))
    return runs


# ============================================================================ derived views
def latest(runs: list[Run], predicate) -> Run | None:
    chosen = [r for r in runs if predicate(r)]
    return chosen[-1] if chosen else None


def is_serving_run(run: Run) -> bool:
    """Stage B runs that deploy the model (stage, feature, ladder), not capacity cells."""
    return run.stage == "b" and not run.step.startswith(CAPACITY_PREFIX)


@dataclass
class Modes:
    primary: Run | None
    primary_is_fallback: bool
    eager: Run | None
    dynamo: Run | None
    text_only: Run | None


def passing_modes(runs: list[Run]) -> Modes:
    """The docs follow the latest passing Stage B mode; fallbacks (eager, TORCHDYNAMO_DISABLE,
    text-only) are the primary only when no other mode passed."""
    passing = [r for r in runs if is_serving_run(r) and r.verdict == "PASS"]
    normal = [r for r in passing if r.fallback_kind is None]
    fallback = {kind: latest(passing, lambda r, k=kind: r.fallback_kind == k) for kind in FALLBACK_KINDS}
    primary = normal[-1] if normal else (passing[-1] if passing else None)
    return Modes(primary, bool(primary and primary.fallback_kind), fallback["eager"], fallback["dynamo"],
                 fallback["text-only"])


def derive_matrix(runs: list[Run]) -> dict[str, Any]:
    """When matrix.json is absent: the stage rows, false-ready cases and ladder rungs straight
    from evidence.json (the feature matrix itself stays "not run": that is matrix.py's job)."""
    stages = {}
    for name, stage in (("stage-a", "a"), ("stage-b", "b")):
        run = latest(runs, lambda r, s=name: r.step == s)
        if run:
            stages[name] = {"status": run.verdict, "log": str(run.log), "run_dir": str(run.run_dir),
                            "reason": run.data.get("reason"), "stage": stage, "category4": None,
                            "evidence_line": None}
    false_ready = [{"step": r.step, "run_dir": str(r.run_dir),
                    "root_cause": _dig(r.data, "root_cause", "text") or r.data.get("reason"),
                    "line_no": _dig(r.data, "root_cause", "line_no")}
                   for r in runs if r.data.get("category") == "false-ready"]
    ladder = [{"rung": r.step, "verdict": r.verdict, "run_dir": str(r.run_dir), "category": r.data.get("category")}
              for r in runs if r.step.startswith("ladder-") or r.fallback_kind]
    a, b = (latest(runs, lambda r, s=s: r.step == s) for s in ("stage-a", "stage-b"))
    checks = []
    for label, key in (("startup + /v1/models", "ready"), ("text", "text"), ("stream", "stream"),
                       ("image", "image"), ("graph", "graph"), ("verdict", "verdict")):
        checks.append({"check": label, "stage_a": _check(a, key), "stage_b": _check(b, key), "note": ""})
    return {"stages": stages, "false_ready": false_ready, "ladder": ladder, "dummy_vs_real": checks}


def _check(run: Run | None, key: str) -> str:
    if run is None:
        return NOT_RUN
    if key == "verdict":
        return run.verdict
    if key == "ready":
        state = _dig(run.data, "readiness", "state")
        return "PASS" if state == "ready" else ("FAIL" if state else NOT_RUN)
    if key == "graph":
        return _dig(run.data, "graph", "status") or NOT_RUN
    for request in run.data.get("requests") or []:
        if request.get("kind") == key:
            return "PASS" if request.get("ok") else "FAIL"
    return NOT_RUN


# ============================================================================ e2e YAML
def load_e2e_schema() -> dict[str, Any]:
    return yaml.safe_load(E2E_SCHEMA.read_text(encoding="utf-8"))


def validate_e2e_config(data: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """Problems of an e2e accuracy config against the schema of ascend-facts.md section 5."""
    schema = schema or load_e2e_schema()
    types = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "map": dict}

    def is_type(value: Any, name: str | list[str]) -> bool:
        names = name if isinstance(name, list) else [name]
        for n in names:
            if n in ("int", "float") and isinstance(value, bool):
                continue
            if isinstance(value, types[n]):
                return True
        return False

    problems: list[str] = []
    if not isinstance(data, dict):
        return ["the config is not a mapping"]
    keys = schema["keys"]
    for key in data:
        if key not in keys:
            problems.append(f"unknown key {key!r}")
    for key, spec in keys.items():
        if key not in data:
            if spec.get("required"):
                problems.append(f"missing required key {key!r}")
            continue
        value = data[key]
        if not is_type(value, spec["type"]):
            problems.append(f"{key}: {value!r} is not {spec['type']}")
            continue
        if "enum" in spec and value not in spec["enum"]:
            problems.append(f"{key}: {value!r} is not one of {spec['enum']}")
    for name, value in (data.get("serve") or {}).items() if isinstance(data.get("serve"), dict) else []:
        spec = schema["serve"].get(name)
        if spec is None:
            problems.append(f"serve.{name}: unknown serve option")
        elif not is_type(value, spec):
            problems.append(f"serve.{name}: {value!r} is not {spec}")
    tasks = data.get("tasks")
    if isinstance(tasks, list):
        if not tasks:
            problems.append("tasks: empty")
        for index, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("name"), str):
                problems.append(f"tasks[{index}]: needs a name")
                continue
            metrics = task.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                problems.append(f"tasks[{index}] {task['name']}: needs a non-empty metrics list")
                continue
            for metric in metrics:
                if not (isinstance(metric, dict) and isinstance(metric.get("name"), str)
                        and is_type(metric.get("value"), "float")):
                    problems.append(f"tasks[{index}] {task['name']}: metric {metric!r} needs name and numeric value")
            extra = set(task) - {"name", "metrics"}
            if extra:
                problems.append(f"tasks[{index}] {task['name']}: unknown keys {sorted(extra)}")
    return problems


def hardware_label(series: str | None) -> str | None:
    text = (series or "").upper()
    for tag in ("A3", "A2"):
        if tag in text:
            return f"Atlas {tag} Series"
    return None


def e2e_config(ctx: dict[str, Any]) -> dict[str, Any] | None:
    """The e2e accuracy config as data (None without a passing accuracy run)."""
    acc = ctx["accuracy"]
    if not acc["present"] or acc["verdict"] != "PASS" or not acc["tasks"]:
        return None
    config: dict[str, Any] = {"model_name": ctx["model_id"]}
    if ctx["hardware"]:
        config["hardware"] = ctx["hardware"]
    if ctx["multimodal"]:
        config["model_type"] = "vllm-vlm"
    config["tasks"] = [{"name": t["name"], "metrics": [{"name": m["name"], "value": m["value"]}
                                                       for m in t["metrics"]
                                                       if isinstance(m["value"], (int, float))]}
                       for t in acc["tasks"]]
    shots = {t["num_fewshot"] for t in acc["tasks"] if t["num_fewshot"] is not None}
    if len(shots) == 1:
        config["num_fewshot"] = shots.pop()
    config["apply_chat_template"] = bool(acc["apply_chat_template"])
    config["fewshot_as_multiturn"] = bool(acc["fewshot_as_multiturn"])
    limits = {t["limit"] for t in acc["tasks"] if t["limit"] is not None}
    if len(limits) == 1:
        config["limit"] = limits.pop()
    serve = dict(ctx["serve_block"] or acc["serve"])
    if serve:
        config["serve"] = serve
    return config


# ============================================================================ docs system
@dataclass
class DocsSystem:
    kind: str  # mkdocs | myst
    repo: Path
    nav_file: Path  # mkdocs.yml or docs/source/tutorials/models/index.md


def detect_docs_system(repo: Path) -> DocsSystem:
    """MkDocs when mkdocs.yml is at the root; MyST when docs/source/conf.py and the models
    index.md with a toctree exist. Anything else is refused: never guess."""
    repo = Path(repo)
    if (repo / "mkdocs.yml").is_file():
        return DocsSystem("mkdocs", repo, repo / "mkdocs.yml")
    index = repo / TUTORIAL_DIR / "index.md"
    if (repo / "docs/source/conf.py").is_file() and index.is_file() and \
            re.search(r"^:{3,}\s*\{toctree\}", index.read_text(encoding="utf-8"), re.M):
        return DocsSystem("myst", repo, index)
    raise UsageError(f"DELIVERY_REPO={repo} has neither mkdocs.yml at its root nor docs/source/conf.py with a "
                     f"{TUTORIAL_DIR}/index.md toctree; cannot tell its docs system",
                     "point DELIVERY_REPO at a vllm-ascend checkout")


def _mkdocs_docs_dir(text: str) -> str:
    match = re.search(r"^docs_dir:\s*(.+?)\s*$", text, re.M)
    if not match:
        return "docs"
    value = match.group(1)
    env_default = re.fullmatch(r"!ENV\s*\[\s*\w+\s*,\s*['\"]?([^'\"\]]+?)['\"]?\s*\]", value)
    return (env_default.group(1) if env_default else value.strip("'\"")).rstrip("/")


def add_nav_entry(docs: DocsSystem, model: str, title: str) -> tuple[str, bool]:
    """(new text of the nav file, changed?). Inserts one line, keeps every other byte: comments,
    !ENV tags and ordering survive (no YAML round trip). Idempotent."""
    text = docs.nav_file.read_text(encoding="utf-8")
    if docs.kind == "myst":
        if re.search(rf"^\s*{re.escape(model)}(\.md)?\s*$", text, re.M):
            return text, False
        lines = text.splitlines(keepends=True)
        start = next((i for i, line in enumerate(lines) if re.match(r"^(:{3,})\s*\{toctree\}", line)), None)
        fence = re.match(r"^(:{3,})", lines[start]).group(1) if start is not None else None
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == fence), None) if fence else None
        if end is None:
            raise UsageError(f"{docs.nav_file}: no closed {{toctree}} block to add {model} to",
                             "fix the toctree in the models index.md")
        lines.insert(end, f"{model}\n")
        return "".join(lines), True
    docs_dir = _mkdocs_docs_dir(text)
    target = f"{TUTORIAL_DIR}/{model}.md"
    if not (target + "/").startswith(docs_dir + "/"):
        raise UsageError(f"{docs.nav_file}: docs_dir {docs_dir!r} does not hold {target}",
                         "place the tutorial by hand; the toolkit only edits the standard layout")
    entry_path = target[len(docs_dir) + 1:]
    if re.search(rf"(^|[\s:]){re.escape(entry_path)}\s*$", text, re.M):
        return text, False
    lines = text.splitlines(keepends=True)
    header = next((i for i, line in enumerate(lines) if re.match(r"^\s*-\s*['\"]?Model Tutorials['\"]?\s*:\s*$", line)), None)
    if header is None:
        raise UsageError(f"{docs.nav_file}: no 'Model Tutorials' section in nav",
                         "add the nav section, or the entry by hand")
    header_indent = len(lines[header]) - len(lines[header].lstrip())
    last_child = None
    child_indent = None
    child_style = None
    for i in range(header + 1, len(lines)):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header_indent:
            break
        if child_indent is None:
            child_indent = indent
        if indent == child_indent and line.lstrip().startswith("- "):
            last_child = i
            child_style = line
    if last_child is None:
        raise UsageError(f"{docs.nav_file}: the 'Model Tutorials' nav section has no entries to follow",
                         "add the entry by hand")
    labelled = re.match(r"^\s*-\s*[^:]+:\s*\S+\.md\s*$", child_style or "")
    item = f"{title}: {entry_path}" if labelled else entry_path
    newline = "\n" if lines[last_child].endswith("\n") else ""
    if not newline:
        lines[last_child] += "\n"
    lines.insert(last_child + 1, " " * child_indent + f"- {item}\n")
    return "".join(lines), True


# ============================================================================ context
def build_context(settings: Settings, model_dir: Path, *, docs_kind: str | None = None,
                  delivery_changes: list[str] | None = None) -> dict[str, Any]:
    triage = adapt_triage(model_dir)
    matrix = adapt_matrix(model_dir)
    capacity = adapt_capacity(model_dir)
    accuracy = adapt_accuracy(model_dir)
    runs = adapt_runs(model_dir)
    modes = passing_modes(runs)
    derived = derive_matrix(runs)
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
    from helpers.accuracy import serve_block  # local: accuracy pulls in the serve machinery

    name = model_dir.name
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
        "model_id": settings.get("MODEL_ID", "").strip() or triage.get("hf_id") or name,
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
        "stages": matrix["stages"] if matrix["present"] and matrix["stages"] else derived["stages"],
        "dummy_vs_real": matrix["dummy_vs_real"] if matrix["present"] and matrix["dummy_vs_real"] else derived["dummy_vs_real"],
        "false_ready": matrix["false_ready"] if matrix["present"] else derived["false_ready"],
        "ladder": matrix["ladder"] if matrix["present"] and matrix["ladder"] else derived["ladder"],
        "matrix_source": "matrix.json" if matrix["present"] else "evidence.json",
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
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                             autoescape=False)
    env.filters["shq"] = shlex.quote
    env.filters["or_not_run"] = lambda value, text="未运行 / not run": text if value in (None, "", [], {}) else value
    return env


def render_e2e_yaml(env: jinja2.Environment, config: dict[str, Any]) -> str:
    problems = validate_e2e_config(config)
    if problems:
        raise UsageError(f"the e2e config would not validate: {'; '.join(problems)}",
                         "fix accuracy.json (rerun `make accuracy`) before `make report`")
    text = env.get_template("e2e_config.yaml.j2").render(c=config)
    loaded = yaml.safe_load(text)
    if loaded != config:
        raise UsageError("the e2e YAML does not round-trip to the data it was rendered from",
                         "report this as a bug of templates/e2e_config.yaml.j2")
    return text


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


def resolve_model_dir(settings: Settings) -> Path:
    if not settings.model:
        raise UsageError("MODEL is not set", "pass MODEL=<the model name or checkpoint path used for the runs>")
    model_dir = ev.model_runs_dir(settings.runs_dir, Path(settings.model).name)
    if not model_dir.is_dir():
        raise UsageError(f"no evidence for {settings.model!r}: {model_dir} does not exist",
                         "run `make stage-a` / `make stage-b` first, or set RUNS_DIR")
    return model_dir


def staged_changes(repo: Path) -> list[str]:
    from helpers.deliver import git

    out = git(repo, "diff", "--cached", "--name-status", check=False)
    return [line for line in out.splitlines() if line.strip()]


def render_all(settings: Settings, out_dir: Path | None = None, docs: DocsSystem | None = None) -> RenderResult:
    model_dir = resolve_model_dir(settings)
    repo = settings.get("DELIVERY_REPO", "").strip()
    if docs is None and repo:
        if not Path(repo).is_dir():
            raise UsageError(f"DELIVERY_REPO={repo!r} is not a directory", "point it at a vllm-ascend checkout")
        docs = detect_docs_system(Path(repo))
    changes = staged_changes(docs.repo) if docs else None
    ctx = build_context(settings, model_dir, docs_kind=docs.kind if docs else None, delivery_changes=changes)
    out = Path(out_dir) if out_dir else model_dir / "deliverables"
    env = environment()
    result = RenderResult(out, signed_off=ctx["stage_b_signed_off"])

    def write(name: str, relative: str, text: str) -> None:
        if relative.endswith(".md"):
            text = tidy_markdown(text)
        path = out / relative
        ev.atomic_write_text(path, text)
        result.files[name] = path

    write("report", "report.zh.md", env.get_template("report.zh.md.j2").render(**ctx))
    write("runbook", "runbook.zh.md", env.get_template("runbook.zh.md.j2").render(**ctx))
    write("issue comment", "issue-comment.zh.md", env.get_template("issue_comment.zh.md.j2").render(**ctx))
    if ctx["e2e"] is not None:
        write("e2e config", f"{E2E_DIR}/{ctx['model']}.yaml", render_e2e_yaml(env, ctx["e2e"]))
    else:
        result.notes.append("e2e config: not written (no passing accuracy.json; run `make accuracy`)")
    if docs is not None:
        write("tutorial", f"{TUTORIAL_DIR}/{ctx['model']}.md", env.get_template("tutorial.md.j2").render(**ctx))
    else:
        result.notes.append("tutorial: not written (set DELIVERY_REPO: its docs system, MkDocs or MyST, decides the syntax)")
    ev.atomic_write_json(out / "deliverables.json", {
        "model": ctx["model"], "generated_at": ctx["generated_at"], "docs": ctx["docs"],
        "stage_b_signed_off": ctx["stage_b_signed_off"],
        "files": {name: str(path.relative_to(out)) for name, path in result.files.items()},
        "log_paths": ctx["log_paths"],
    })
    return result
