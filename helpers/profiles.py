"""Backend profiles (ascend, cuda, cpu) are data: helpers/profiles/<name>.yaml.

Adding a backend means adding a file here (or in BRINGUP_PROFILE_DIR, which tests use for
fake launchers).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from helpers import load_yaml
from helpers import box as box_module
from helpers.errors import EnvironmentProblem, UsageError
from helpers.settings import REPO_ROOT

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
    # where the box facts come from: {} = this machine; {command: [...]} = a command printing
    # them as JSON (the replay backend's recorded box)
    box: dict[str, Any] = field(default_factory=dict)
    # `extends: <profile>` in the YAML: every key this profile does not set comes from that one,
    # and so do the decision rules (features.yaml `backends`): the family is the root profile
    family: str = ""
    path: Path | None = None

    @property
    def graph_expected(self) -> bool:
        return bool(self.graph.get("expected"))

    def facts_box(self, roots: dict[str, Path | None] | None = None) -> box_module.Box:
        """What the box this backend serves on reports (versions, modules, source, NPUs)."""
        cached = self.__dict__.get("_facts_box")  # a recorded box is read once per command
        if cached is not None:
            return cached
        command = self.box.get("command")
        if command:
            substitutions = {"python": sys.executable, "repo": str(REPO_ROOT)}
            made: box_module.Box = box_module.RecordedBox(
                [str(part).format(**substitutions) for part in command], roots)
        else:
            made = box_module.Box(roots)
        self.__dict__["_facts_box"] = made
        return made

    def check_installed(self, facts: box_module.Box | None = None) -> None:
        """What this backend needs to start a server is here (exit 3 with one line if not)."""
        facts = facts or self.facts_box()
        for module in self.requires.get("modules", []):
            if not facts.importable(module):
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


def _read(name: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path] | None:
    """A profile's YAML with its `extends` chain applied (keys of the child win)."""
    for directory in profile_dirs():
        path = directory / f"{name}.yaml"
        if path.is_file():
            data = load_yaml(path.read_text(encoding="utf-8")) or {}
            known = {f.name for f in fields(Profile)} - {"family", "path"} | {"extends"}
            unknown = sorted(set(data) - known)
            if unknown:
                raise UsageError(f"profile {path}: unknown key(s) {unknown}", "see helpers/profiles/ascend.yaml")
            parent = str(data.get("extends") or "")
            if parent:
                if parent in seen + (name,):
                    raise UsageError(f"profile {path}: extends {parent!r} in a loop")
                base = _read(parent, seen + (name,))
                if base is None:
                    raise UsageError(f"profile {path}: extends {parent!r}, which is not a profile",
                                     f"use one of: {', '.join(available())}")
                # a mapping (capacity, defaults, requires ...) overrides its parent's keys one by one
                merged = {key: ({**value, **data[key]} if isinstance(value, dict) and isinstance(data.get(key), dict)
                                else data.get(key, value)) for key, value in base[0].items()}
                data = {**data, **merged, "family": base[0].get("family") or parent}
            return data, path
    return None


def load(name: str) -> Profile:
    name = (name or "").strip().lower() or detect_backend()
    found = _read(name)
    if found is None:
        raise UsageError(f"BACKEND={name!r} is unknown", f"use one of: {', '.join(available())}")
    data, path = found
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
        box=data.get("box") or {},
        family=str(data.get("family") or data.get("name", name)),
        path=path,
    )
