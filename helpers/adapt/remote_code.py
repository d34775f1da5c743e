"""The checkpoint's own Python code against the installed transformers, read statically.

Every `from transformers... import X` / `import transformers.x` of the checkpoint's *.py is
parsed with ast (the code is never executed) and looked up in the installed transformers. A
symbol it lacks fails the start later with a generic import error; named here, before any start.
The workflow's rule: never upgrade transformers on the box; copy the needed code into the
implementation root.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from helpers import box


@dataclass
class MissingSymbol:
    file: str
    line: int
    module: str
    symbol: str  # "" when the module itself is missing

    def text(self) -> str:
        what = f"{self.module}.{self.symbol}" if self.symbol else self.module
        return f"{self.file}:{self.line} imports {what}"


def transformers_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, symbol) of each transformers import in one file; symbol '' for `import x`."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "transformers":
            found += [(node.lineno, node.module, alias.name) for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, "") for a in node.names if a.name.split(".")[0] == "transformers"]
    return found


def _present(module: str, symbol: str) -> bool:
    try:
        imported = importlib.import_module(module)
    except Exception:  # a module the installed transformers does not have (or cannot import)
        return False
    if not symbol:
        return True
    try:
        return hasattr(imported, symbol)
    except Exception:  # transformers' lazy modules import on attribute access
        return False


def check(directory: Path, config: dict[str, Any], code_files: list[str]) -> dict[str, Any]:
    """{checkpoint_version, installed_version, files, missing: [...], advice}."""
    installed = box.package_version("transformers")
    missing: list[MissingSymbol] = []
    if installed:
        for name in code_files:
            for line, module, symbol in transformers_imports(directory / name):
                if not _present(module, symbol):
                    missing.append(MissingSymbol(name, line, module, symbol))
    wanted = config.get("transformers_version")
    record: dict[str, Any] = {"checkpoint_version": wanted, "installed_version": installed,
                              "files": list(code_files), "missing": [asdict(m) for m in missing],
                              "missing_text": [m.text() for m in missing]}
    if not installed:
        record["note"] = "transformers is not installed here: the imports were not checked"
    return record
