"""RUNS_DIR/<model>/changes.json (written by `make changes`) as the later steps read it: the two
implementation roots (path, HEAD, the base the diff is taken from) and every changed file with
its root, path, status, kind and whether it is in the minimal set. The report lists them; the
delivery puts the vllm-ascend ones in the commit and exports the vLLM ones as a patch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import evidence as ev

FILE = "changes.json"
VLLM, ASCEND = "vllm", "vllm-ascend"


@dataclass
class Root:
    name: str
    path: Path | None
    head: str | None
    base: str | None

    @property
    def diff_base(self) -> str:
        """What the root's changes are measured from: the recorded base, else its HEAD."""
        return self.base or self.head or "HEAD"


@dataclass
class ChangedFile:
    root: str
    path: str
    status: str | None
    kind: str | None
    minimal: bool


@dataclass
class ChangeSet:
    present: bool
    source: Path
    roots: dict[str, Root] = field(default_factory=dict)
    files: list[ChangedFile] = field(default_factory=list)
    registry: Any = None
    verdict: Any = None

    def of_root(self, name: str) -> list[ChangedFile]:
        """The root's files in the minimal set (the ones that are delivered)."""
        return [f for f in self.files if f.root == name and f.minimal]

    def outside(self) -> list[ChangedFile]:
        return [f for f in self.files if not f.minimal]


def read(model_dir: Path) -> ChangeSet:
    path = Path(model_dir) / FILE
    try:
        raw = ev.read_json(path)
    except (OSError, ValueError):
        raw = None
    if not isinstance(raw, dict):
        return ChangeSet(False, path)
    roots = {}
    for name, root in (raw.get("roots") or {}).items():
        if isinstance(root, dict):
            roots[name] = Root(name, Path(root["path"]) if root.get("path") else None, root.get("head"),
                               root.get("base"))
    files = [ChangedFile(str(f.get("root")), str(f["path"]), f.get("status"), f.get("kind"),
                         f.get("minimal") is not False)
             for f in raw.get("files") or [] if isinstance(f, dict) and f.get("path")]
    return ChangeSet(True, path, roots, files, raw.get("registry"), raw.get("verdict"))
