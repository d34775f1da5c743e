"""Backend profiles (ascend, cuda, cpu) are data: helpers/profiles/<name>.yaml.

Adding a backend means adding a file here (or in BRINGUP_PROFILE_DIR, which tests use for
fake launchers).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from helpers import box
from helpers.errors import EnvironmentProblem, UsageError

BUILTIN_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass
class Profile:
    name: str
    launcher: list[str]
    env: dict[str, str]
    flags: list[str]
    defaults: dict[str, Any]
    graph: dict[str, Any]
    capacity: dict[str, Any]
    requires: dict[str, list[str]] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)
    workdir: str = ""
    detect_command: str = ""
    # flag -> env variables to remove from the server's environment when the flag is given
    # (a legacy variable that would silently override the explicit flag).
    env_unset_by_flag: dict[str, list[str]] = field(default_factory=dict)
    path: Path | None = None

    @property
    def graph_expected(self) -> bool:
        return bool(self.graph.get("expected"))

    def check_installed(self) -> None:
        """What this backend needs to start a server is here (exit 3 with one line if not)."""
        for module in self.requires.get("modules", []):
            if not box.module_importable(module):
                raise EnvironmentProblem(f"Python module {module!r} is not importable for BACKEND={self.name}",
                                         f"run `make setup BACKEND={self.name}` or use the image that has it")
        for command in self.requires.get("commands", []):
            if shutil.which(command) is None:
                raise EnvironmentProblem(f"command {command!r} not found for BACKEND={self.name}",
                                         "activate the environment that has vLLM")


def profile_dirs() -> list[Path]:
    extra = os.environ.get("BRINGUP_PROFILE_DIR", "").strip()
    return ([Path(extra)] if extra else []) + [BUILTIN_DIR]


def available() -> list[str]:
    names: set[str] = set()
    for directory in profile_dirs():
        names.update(p.stem for p in directory.glob("*.yaml"))
    return sorted(names)


def detect_backend() -> str:
    """ascend where npu-smi exists, cuda where nvidia-smi exists, else cpu."""
    for name in ("ascend", "cuda"):
        command = load(name).detect_command
        if command and shutil.which(command):
            return name
    return "cpu"


def load(name: str) -> Profile:
    name = (name or "").strip().lower() or detect_backend()
    for directory in profile_dirs():
        path = directory / f"{name}.yaml"
        if path.is_file():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            unknown = sorted(set(data) - {f.name for f in fields(Profile)})
            if unknown:
                raise UsageError(f"profile {path}: unknown key(s) {unknown}", "see helpers/profiles/ascend.yaml")
            return Profile(
                name=data.get("name", name),
                launcher=[str(x) for x in data.get("launcher", [])],
                env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
                flags=[str(x) for x in data.get("flags") or []],
                defaults=data.get("defaults") or {},
                graph=data.get("graph") or {},
                capacity=data.get("capacity") or {},
                requires=data.get("requires") or {},
                versions=list(data.get("versions") or []),
                workdir=data.get("workdir") or "",
                detect_command=data.get("detect_command") or "",
                env_unset_by_flag={str(k): [str(x) for x in v or []]
                                   for k, v in (data.get("env_unset_by_flag") or {}).items()},
                path=path,
            )
    raise UsageError(
        f"BACKEND={name!r} is unknown",
        f"use one of: {', '.join(available())}",
    )
