"""Is an architecture registered in the implementation roots? Read from their source (Python's
ast, never importing vLLM): vLLM's registry.py dict literals and vllm-ascend's
`ModelRegistry.register_model(...)` calls, as helpers/changes.yaml says where they are. Each
entry's target (module file, class) is checked too: a registry line pointing at a module that
does not exist is the classic typo of a new adapter.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Entry:
    arch: str
    root: str          # vllm | vllm-ascend
    where: str         # path:line, relative to the root
    module_path: str   # the target module's file, relative to the root ("" when unknown)
    cls: str
    table: str         # the registry table (or the register call)
    target_ok: bool | None = None
    target_problem: str = ""


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8", errors="replace"), str(path))
    except (OSError, SyntaxError, ValueError):
        return None


def _module_file(root: Path, module: str, module_dir: str) -> str:
    """A registry module name -> its file relative to the root (package/__init__.py or module.py)."""
    base = module.replace(".", "/") if "." in module else f"{module_dir}/{module}"
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return f"{base}.py"


def _check_target(root: Path, entry: Entry) -> None:
    path = root / entry.module_path
    if not entry.module_path:
        return
    if not path.is_file():
        entry.target_ok, entry.target_problem = False, f"{entry.module_path} does not exist"
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    if entry.cls and not re.search(rf"^\s*class\s+{re.escape(entry.cls)}\b", text, re.M) and \
            not re.search(rf"^\s*{re.escape(entry.cls)}\s*=", text, re.M):
        entry.target_ok, entry.target_problem = False, f"{entry.module_path} defines no class {entry.cls}"
        return
    entry.target_ok = True


def vllm_entries(root: Path, rules: dict[str, Any]) -> tuple[list[Entry], str]:
    """Every architecture of the registry tables in vLLM's registry.py ('' or why not read)."""
    relative = rules["file"]
    tree = _parse(root / relative)
    if tree is None:
        return [], f"{relative} is missing or does not parse"
    dicts: dict[str, ast.Dict] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name) and isinstance(getattr(node, "value", None), ast.Dict):
                dicts[target.id] = node.value
    union = dicts.get(rules.get("union", ""))
    if union is not None:
        tables = [v.id for k, v in zip(union.keys, union.values) if k is None and isinstance(v, ast.Name)]
    else:
        excluded = set(rules.get("not_registered") or [])
        tables = [name for name in dicts if name.endswith("_MODELS") and name not in excluded]
    entries = []
    for table in tables:
        node = dicts.get(table)
        if node is None:
            continue
        for key, value in zip(node.keys, node.values):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                continue
            module = cls = ""
            if isinstance(value, ast.Tuple) and len(value.elts) == 2 and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts):
                module, cls = value.elts[0].value, value.elts[1].value
            entries.append(Entry(key.value, "vllm", f"{relative}:{key.lineno}",
                                 _module_file(root, module, rules["module_dir"]) if module else "", cls, table))
    return entries, ""


def ascend_entries(root: Path, rules: dict[str, Any]) -> tuple[list[Entry], str]:
    """vllm-ascend's own registrations: register_model("Arch", "pkg.module:Class") calls."""
    entries, missing = [], []
    call = rules.get("call", "register_model")
    for relative in rules.get("files") or []:
        tree = _parse(root / relative)
        if tree is None:
            missing.append(relative)
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            arch, target = node.args[0], node.args[1]
            if name != call or not (isinstance(arch, ast.Constant) and isinstance(arch.value, str)):
                continue
            module, cls = "", ""
            if isinstance(target, ast.Constant) and isinstance(target.value, str) and ":" in target.value:
                module, cls = target.value.split(":", 1)
            entries.append(Entry(arch.value, "vllm-ascend", f"{relative}:{arch.lineno}",
                                 _module_file(root, module, "") if module else "", cls, call))
    return entries, (f"{', '.join(missing)} missing or unparsable" if missing else "")


def check_registration(architectures: list[str], roots: dict[str, Path | None],
                       rules: dict[str, Any]) -> dict[str, Any]:
    """{registered: {arch: bool|None}, where: {arch: path:line}, entries: [...], problems, notes}.
    vllm-ascend's registration wins at runtime (it overwrites vLLM's), so it is named first."""
    entries: list[Entry] = []
    notes: list[str] = []
    readers = {"vllm": vllm_entries, "vllm-ascend": ascend_entries}
    read_any = False
    for name in ("vllm-ascend", "vllm"):
        root = roots.get(name)
        if root is None or not root.is_dir():
            notes.append(f"{name} root absent: its registry was not read")
            continue
        found, why = readers[name](root, rules[name])
        if why:
            notes.append(f"{name}: {why}")
        else:
            read_any = True
        for entry in found:
            if entry.arch in architectures:
                _check_target(root, entry)
        entries += found
    registered: dict[str, bool | None] = {}
    where: dict[str, str] = {}
    problems: list[str] = []
    for arch in architectures:
        hits = [e for e in entries if e.arch == arch]
        registered[arch] = bool(hits) if read_any else None
        if hits:
            where[arch] = hits[0].where
            problems += [f"{e.where}: {arch} -> {e.cls} but {e.target_problem}" for e in hits if e.target_ok is False]
        elif read_any:
            problems.append(f"{arch} (config.json architectures) is not registered in either root: add it to "
                            f"{rules['vllm']['file']} (or register it in vllm-ascend's {rules['vllm-ascend']['files'][0]})")
    return {"registered": registered, "where": where, "problems": problems, "notes": notes,
            "entries": [vars(e) for e in entries if e.arch in architectures]}
