"""`make scaffold`: the minimal adapter of an unregistered architecture, where upstream keeps it.

- vllm-ascend root (default): `vllm_ascend/models/<module>.py` reusing the chosen vLLM class,
  with the weight rename written out (templates/adapter.py.j2), and a register_model() entry in
  `vllm_ascend/models/__init__.py` (how vllm-ascend registers its models: the
  `vllm.general_plugins` entry point calls it);
- vLLM root (ADAPTER_ROOT=vllm): `vllm/model_executor/models/<module>.py` and a registry.py entry.
Everything that can refuse (unknown FROM, a root that is not a git work tree, a file that exists,
an architecture already registered there) is decided before the first byte is written.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import gitrepo, templating
from helpers.adapt import assess, nearest
from helpers.checkpoint import ConfigFacts, TensorInfo
from helpers.errors import EnvironmentProblem, UsageError

ASCEND_INIT = "vllm_ascend/models/__init__.py"
VLLM_MODELS = "vllm/model_executor/models"
VLLM_REGISTRY = f"{VLLM_MODELS}/registry.py"
REGISTRY_TABLE = re.compile(r"^_TEXT_GENERATION_MODELS[ \t]*=[ \t]*\{[ \t]*$", re.M)
NEW_ASCEND_INIT = "from vllm import ModelRegistry\n\n\ndef register_model():\n"


@dataclass
class Plan:
    root: Path
    root_name: str                     # vllm-ascend | vllm
    arch: str
    base: str
    renames: list[list[str]]
    files: dict[str, str] = field(default_factory=dict)   # path relative to the root -> new text
    created: list[str] = field(default_factory=list)


def choose_base(requested: str, config: dict[str, Any], facts: ConfigFacts,
                tensors: dict[str, TensorInfo]) -> tuple[str, list[list[str]], dict[str, tuple[str, str]]]:
    """(base architecture, its rename, vLLM's sources): FROM when given, else triage's nearest."""
    sources = nearest.vllm_sources()
    if not sources:
        raise EnvironmentProblem("vLLM is not installed in this Python: scaffold reads its registry.py",
                                 "run it where vLLM is installed (the serving environment)")
    candidates = {c.arch: c for c in nearest.load_candidates()}
    if requested and requested not in sources:
        raise UsageError(f"FROM={requested} is not an architecture the installed vLLM registers",
                         "use one of triage's nearest architectures (make triage), e.g. FROM=Qwen2ForCausalLM")
    print_ = nearest.fingerprint(config, facts, tensors)
    if not requested:
        ranked = nearest.rank(config, facts, tensors, limit=1)["nearest"]
        if not ranked:
            raise UsageError("no registered architecture is near this checkpoint", "name one with FROM=<Architecture>")
        requested = ranked[0]["arch"]
    if requested in candidates:
        return requested, nearest.compare(print_, candidates[requested]).rename, sources
    # a registered class triage has no weight list for: its names are taken as they are
    return requested, [], sources


def plan(root: Path | None, root_name: str, arch: str, model_type: str | None, base: str,
         renames: list[list[str]], sources: dict[str, tuple[str, str]]) -> Plan:
    top = gitrepo.toplevel(root) if root and root.is_dir() else None
    if top is None:
        variable = "VLLM_ASCEND_SRC" if root_name == "vllm-ascend" else "VLLM_SRC"
        raise UsageError(f"the {root_name} root {root} is not a git work tree", f"set {variable} to its checkout")
    base_file, base_class = sources[base]
    module = assess.module_name(model_type, arch)
    base_module = Path(base_file).stem
    result = Plan(top, root_name, arch, base, renames)
    if root_name == "vllm-ascend":
        adapter = f"vllm_ascend/models/{module}.py"
        import_from = f"vllm.model_executor.models.{base_module}"
    else:
        adapter = f"{VLLM_MODELS}/{module}.py"
        import_from = f".{base_module}"
    if (top / adapter).exists():
        raise UsageError(f"{top / adapter} already exists: scaffold never overwrites a file",
                         "move it away, or edit it by hand")
    result.files[adapter] = templating.render(
        "adapter.py.j2", arch=arch, base_class=base_class, base_file=base_file, model_type=model_type or arch,
        import_from=import_from, renames=renames)
    result.created.append(adapter)
    if root_name == "vllm-ascend":
        _register_ascend(result, top, arch, f"vllm_ascend.models.{module}:{arch}")
    else:
        _register_vllm(result, top, arch, module)
    return result


def _register_ascend(result: Plan, top: Path, arch: str, target: str) -> None:
    path = top / ASCEND_INIT
    if not path.is_file():
        result.created.append(ASCEND_INIT)
    result.files[ASCEND_INIT] = with_registration(path.read_text(encoding="utf-8") if path.is_file() else None,
                                                  arch, target)


def with_registration(text: str | None, arch: str, target: str) -> str:
    """vllm_ascend/models/__init__.py with one register_model() call more, as the last statement
    of `def register_model():` (the file as vllm-ascend starts it when there is none)."""
    line = f'    ModelRegistry.register_model(\n        "{arch}",\n        "{target}")\n'
    if text is None:
        return NEW_ASCEND_INIT + line
    if f'"{arch}"' in text:
        raise UsageError(f"{ASCEND_INIT} already registers {arch}", "edit that registration by hand")
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise UsageError(f"{ASCEND_INIT} does not parse (line {exc.lineno})", "fix it first") from None
    function = next((node for node in tree.body if isinstance(node, ast.FunctionDef)
                     and node.name == "register_model"), None)
    if function is None or function.end_lineno is None:
        raise UsageError(f"{ASCEND_INIT} has no `def register_model():`", "add the registration by hand")
    lines = text.splitlines(keepends=True)
    end = function.end_lineno
    if not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    return "".join(lines[:end]) + line + "".join(lines[end:])


def _register_vllm(result: Plan, top: Path, arch: str, module: str) -> None:
    path = top / VLLM_REGISTRY
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if f'"{arch}"' in text:
        raise UsageError(f"{VLLM_REGISTRY} already registers {arch}", "edit that entry by hand")
    match = REGISTRY_TABLE.search(text)
    if match is None:
        raise UsageError(f"{VLLM_REGISTRY} has no `_TEXT_GENERATION_MODELS = {{` table", "add the entry by hand")
    entry = f'    "{arch}": ("{module}", "{arch}"),\n'
    result.files[VLLM_REGISTRY] = text[:match.end() + 1] + entry + text[match.end() + 1:]


def write(result: Plan) -> list[str]:
    """Write the planned files (the refusals are behind us); returns their paths."""
    for relative, text in result.files.items():
        path = result.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(result.files)
