"""`make deliver`: an adapter written in the vLLM root, moved into vllm-ascend's own registration,
so the one signed commit carries it.

A new module under vllm/model_executor/models/ that a registry.py entry added in the same
change points at becomes `vllm_ascend/models/<module>.py` (relative imports made absolute) with a
register_model() call in `vllm_ascend/models/__init__.py`. registry.py leaves the vLLM patch when
the relocated entries are all it changed. Everything else in the vLLM root is vLLM core that
vllm-ascend cannot carry: it stays in the patch, each file with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from helpers import gitrepo
from helpers.adapt import scaffold
from helpers.errors import UsageError

MODELS = "vllm/model_executor/models"
ENTRY = re.compile(r'^\s*"(\w+)":\s*\(\s*"(\w+)",\s*"(\w+)"\s*\),?\s*$')
RELATIVE = re.compile(r"^(\s*)from\s+(\.+)([\w.]*)\s+import\b", re.M)
PACKAGES = {1: "vllm.model_executor.models", 2: "vllm.model_executor", 3: "vllm"}


@dataclass
class Relocation:
    files: dict[str, str] = field(default_factory=dict)    # delivery path -> text
    moved: dict[str, str] = field(default_factory=dict)    # vLLM path -> delivery path
    registrations: list[tuple[str, str]] = field(default_factory=list)  # (arch, "module:Class")
    kept: dict[str, str] = field(default_factory=dict)     # vLLM path -> why it stays a patch


def absolute_imports(text: str) -> str:
    """`from .qwen2 import X` -> `from vllm.model_executor.models.qwen2 import X` (and `..`)."""
    def replace(match: re.Match) -> str:
        package = PACKAGES.get(len(match.group(2)))
        if package is None:
            return match.group(0)
        target = f"{package}.{match.group(3)}" if match.group(3) else package
        return f"{match.group(1)}from {target} import"
    return RELATIVE.sub(replace, text)


def _registry_diff(tree: Path, base: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(entries the change added, any other changed line) of registry.py since base."""
    diff = gitrepo.git(tree, "diff", "-U0", base, "--", scaffold.VLLM_REGISTRY, check=False)
    added, other = [], []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")) or not line.startswith(("+", "-")):
            continue
        match = ENTRY.match(line[1:])
        if line.startswith("+") and match:
            added.append(match.groups())
        elif line[1:].strip():
            other.append(line)
    return added, other


def plan(tree: Path, base: str, vllm_paths: list[str], repo: Path) -> Relocation:
    result = Relocation()
    added, other = _registry_diff(tree, base) if scaffold.VLLM_REGISTRY in vllm_paths else ([], [])
    by_module = {module: (arch, cls) for arch, module, cls in added}
    for path in vllm_paths:
        module = Path(path).stem
        is_new = not gitrepo.ok(tree, "cat-file", "-e", f"{base}:{path}")
        if str(Path(path).parent) == MODELS and path != scaffold.VLLM_REGISTRY and is_new and module in by_module:
            target = f"vllm_ascend/models/{module}.py"
            if (repo / target).exists():
                raise UsageError(f"{target} already exists in DELIVERY_REPO: the vLLM root's {path} cannot move there",
                                 "remove or rename one of them, then rerun make deliver")
            result.files[target] = absolute_imports((tree / path).read_text(encoding="utf-8"))
            result.moved[path] = target
            arch, cls = by_module[module]
            result.registrations.append((arch, f"vllm_ascend.models.{module}:{cls}"))
        elif path != scaffold.VLLM_REGISTRY:
            result.kept[path] = ("changes vLLM core, which vllm-ascend cannot carry" if not is_new else
                                 "a new vLLM file no registry entry of this change points at")
    if scaffold.VLLM_REGISTRY in vllm_paths:
        unmoved = [arch for arch, module, _ in added if module not in {Path(p).stem for p in result.moved}]
        if other or unmoved:
            what = f"entries for {', '.join(unmoved)}" if unmoved else f"other lines ({other[0].strip()[:60]})"
            result.kept[scaffold.VLLM_REGISTRY] = f"registry.py also changes {what}"
    if result.registrations:
        _register(result, repo)
    return result


def _register(result: Relocation, repo: Path) -> None:
    """The registrations, each one more call in vllm-ascend's register_model() (same refusals as
    `make scaffold`); nothing is written yet."""
    path = repo / scaffold.ASCEND_INIT
    text = path.read_text(encoding="utf-8") if path.is_file() else None
    for arch, target in result.registrations:
        text = scaffold.with_registration(text, arch, target)
    assert text is not None
    result.files[scaffold.ASCEND_INIT] = text


def write(result: Relocation, repo: Path) -> list[str]:
    for relative, text in result.files.items():
        target = repo / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return list(result.files)
