"""`make changes`: what the engineer changed in the implementation roots for this model, checked.

For VLLM_SRC and VLLM_ASCEND_SRC: every file that differs from the base (the commit a run of
this model first saw in that root, recorded in changes.json the first time; committed and
uncommitted changes and untracked files alike), named by helpers/changes.yaml as the workflow
names them (model adapter, processor, registry entry, backend patch, copied transformers
modeling files; anything else is outside the minimal set), with its line counts and the result
of compiling it (`python -m py_compile`, without writing .pyc files into the root). Then the
architectures of config.json must be registered in the roots' source (helpers/changes_registry.py).
Writes RUNS_DIR/<model>/changes.json; exit 0 PASS, 1 FAIL, 3 when neither root is a git work tree.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any


from helpers import load_yaml
from helpers import evidence as ev
from helpers import sourcetree
from helpers.changes_registry import check_registration
from helpers.errors import EXIT_FAIL, EXIT_PASS, EnvironmentProblem, UsageError
from helpers.model import Model
from helpers.runs import first_seen_heads
from helpers.settings import Settings
from helpers.triage_view import label_table

RULES_PATH = Path(__file__).with_name("changes.yaml")
SCHEMA = 1
KINDS = ("model-adapter", "processor", "registry", "backend-patch", "copied-modeling", "deliverable", "other")


@dataclass
class KindRule:
    kind: str
    root: str
    paths: list[re.Pattern]
    content: list[re.Pattern] = field(default_factory=list)


def glob_regex(pattern: str) -> re.Pattern:
    """`*` within a directory, `**` across directories (`**/x` also matches `x`)."""
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out + r"\Z")


@lru_cache(maxsize=4)
def load_rules(path: Path = RULES_PATH) -> tuple[list[KindRule], dict[str, Any]]:
    data = load_yaml(path.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(data) - {"kinds", "registry"})
    if unknown:
        raise UsageError(f"{path.name}: unknown key(s) {unknown}")
    rules = []
    for item in data.get("kinds") or []:
        extra = sorted(set(item) - {"kind", "root", "paths", "content"})
        if extra or item.get("kind") not in KINDS or item.get("root") not in ("vllm", "vllm-ascend", "any"):
            raise UsageError(f"{path.name}: bad rule {item} (keys kind, root, paths, content; kinds {KINDS})")
        rules.append(KindRule(item["kind"], item["root"], [glob_regex(p) for p in item.get("paths") or []],
                              [re.compile(c, re.M) for c in item.get("content") or []]))
    return rules, data.get("registry") or {}


def classify(root_name: str, relative: str, text: str | None, rules: list[KindRule]) -> str:
    for rule in rules:
        if rule.root not in ("any", root_name):
            continue
        if any(p.match(relative) for p in rule.paths):
            return rule.kind
        if text is not None and any(c.search(text) for c in rule.content):
            return rule.kind
    return "other"


def compile_check(path: Path) -> str:
    """'ok', or `file:line: Error: message` the way py_compile reports it (no .pyc written)."""
    try:
        source = path.read_bytes()
    except OSError as exc:
        return f"{path}:0: OSError: {exc.strerror}"
    try:
        compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        return f"{path}:{exc.lineno or 0}: {type(exc).__name__}: {exc.msg}"
    except (ValueError, UnicodeDecodeError) as exc:
        return f"{path}:0: {type(exc).__name__}: {exc}"
    return "ok"


# --- the base a run first saw ---------------------------------------------------------------

def choose_base(path: Path, top: Path, head: str, previous: dict[str, Any] | None,
                seen: dict[str, str]) -> tuple[str, str]:
    """(base commit, where it came from): the base changes.json recorded the first time, else the
    HEAD the first recorded context of this model saw, else HEAD now."""
    if previous and previous.get("path") == str(path) and previous.get("base"):
        if sourcetree.commit_exists(top, previous["base"]):
            return previous["base"], "changes.json (recorded the first time)"
    first = seen.get(str(path)) or seen.get(str(top))
    if first and sourcetree.commit_exists(top, first):
        return first, "the first recorded context of this model"
    return head, "HEAD (first time this root is seen)"


# --- the step -------------------------------------------------------------------------------

def architectures_of(model: Model) -> list[str]:
    listed = model.config.get("architectures") if model.config else None
    if not listed:
        try:
            listed = (ev.read_json(model.runs_dir / "triage.json").get("config") or {}).get("architectures")
        except (OSError, ValueError):
            listed = None
    return [str(a) for a in listed or []]


def changes_path(model: Model) -> Path:
    return model.runs_dir / "changes.json"


def write(record: dict[str, Any], model: Model) -> Path:
    path = changes_path(model)
    ev.atomic_write_json(path, record)
    return path


def check(settings: Settings, model: Model) -> dict[str, Any]:
    started = time.monotonic()
    kind_rules, registry_rules = load_rules()
    roots = sourcetree.implementation_roots(settings)
    try:
        previous = ev.read_json(changes_path(model))
    except (OSError, ValueError):
        previous = {}
    seen = first_seen_heads(model.runs_dir)
    root_records: dict[str, Any] = {}
    files: list[dict[str, Any]] = []
    diffstats: dict[str, str] = {}
    problems: list[str] = []
    warnings: list[str] = []
    work_trees: dict[str, Path | None] = {}
    for name, path in roots.items():
        info = sourcetree.inspect(path) if path is not None else None
        if info is None or not info.git or not info.head:
            why = "not set" if path is None else (info.error if info and info.error else "no commit yet")
            root_records[name] = {"path": str(path) if path else None, "head": None, "branch": None, "base": None,
                                  "dirty": False, "error": why}
            warnings.append(f"{sourcetree.ROOT_SETTINGS[name]}={path}: {why}; its changes are not checked")
            work_trees[name] = None
            continue
        top = sourcetree.toplevel(path) or path
        work_trees[name] = top
        base, base_source = choose_base(path, top, info.head, (previous.get("roots") or {}).get(name), seen)
        changed = sourcetree.changed_files(top, base)
        root_records[name] = {"path": str(path), "toplevel": str(top), "head": info.head, "branch": info.branch,
                              "base": base, "base_source": base_source, "dirty": bool(info.dirty),
                              "dirty_count": info.dirty_count, "fingerprint": info.fingerprint}
        diffstats[name] = sourcetree.diffstat(changed)
        for change in changed:
            file_path = top / change.path
            is_python = change.path.endswith(".py") and change.status != "D"
            text = file_path.read_text(encoding="utf-8", errors="replace") if is_python and file_path.is_file() else None
            kind = classify(name, change.path, text, kind_rules)
            entry = {"root": name, "path": change.path, "status": change.status, "kind": kind,
                     "minimal": kind != "other", "added": change.added, "removed": change.removed,
                     "py_compile": compile_check(file_path) if is_python else None,
                     "uncommitted": change.uncommitted, "binary": change.binary, "old_path": change.old_path}
            files.append(entry)
            if entry["py_compile"] not in (None, "ok"):
                problems.append(entry["py_compile"])
    if all(tree is None for tree in work_trees.values()):
        raise EnvironmentProblem("neither VLLM_SRC nor VLLM_ASCEND_SRC is a git work tree: nothing to check",
                                 "set VLLM_SRC / VLLM_ASCEND_SRC to the implementation roots (env.example)")
    outside = [f"{f['root']}:{f['path']}" for f in files if not f["minimal"]]
    if outside:
        shown = ", ".join(outside[:5]) + (f" (+{len(outside) - 5} more)" if len(outside) > 5 else "")
        warnings.append(f"{len(outside)} changed file(s) outside the minimal set: {shown}")
    architectures = architectures_of(model)
    registry = check_registration(architectures, work_trees, registry_rules)
    problems += registry.pop("problems")
    warnings += registry.pop("notes")
    if not architectures:
        warnings.append("config.json names no architectures: registration not checked")
    return {
        "schema": SCHEMA,
        "generated_at": ev.utc_iso(),
        "model": model.name,
        "architectures": architectures,
        "roots": root_records,
        "files": files,
        "registry": registry,
        "diffstat": diffstats,
        "summary": {kind: sum(1 for f in files if f["kind"] == kind) for kind in KINDS},
        "verdict": "FAIL" if problems else "PASS",
        "problems": problems,
        "warnings": warnings,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def exit_code(record: dict[str, Any]) -> int:
    return EXIT_PASS if record["verdict"] == "PASS" else EXIT_FAIL


def render_table(record: dict[str, Any]) -> str:
    lines = [f"{record['verdict']} changes {record['model']} (architectures: {', '.join(record['architectures']) or '?'})"]
    rows = []
    for name, root in record["roots"].items():
        if root.get("head"):
            state = (f"HEAD {root['head'][:12]} ({root['branch'] or 'detached'}), base {root['base'][:12]}"
                     f" ({root['base_source']}){', dirty' if root['dirty'] else ''}")
        else:
            state = root.get("error") or "?"
        rows.append(("实现根目录", sourcetree.ROOT_SETTINGS[name], f"{root['path']}  {state}"))
    for arch, registered in record["registry"]["registered"].items():
        where = record["registry"]["where"].get(arch)
        rows.append(("注册", arch, {True: f"registered ({where})", False: "NOT registered",
                                    None: "unknown (no registry read)"}[registered]))
    lines += label_table(rows)
    for entry in record["files"]:
        compiled = "" if entry["py_compile"] is None else ("  py_compile ok" if entry["py_compile"] == "ok"
                                                          else "  py_compile FAILED")
        flag = "" if entry["minimal"] else "  (outside the minimal set)"
        lines.append(f"  {entry['status']:2s} {entry['root']}:{entry['path']}  {entry['kind']}  "
                     f"+{entry['added']} -{entry['removed']}{compiled}{flag}")
    if not record["files"]:
        lines.append("  no changed files since the base")
    lines += [f"警告 warning: {w}" for w in record["warnings"]]
    lines += [f"问题 problem: {p}" for p in record["problems"]]
    return "\n".join(lines)
