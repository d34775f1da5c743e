"""Is the architecture registered in the installed vLLM? Asked of vLLM's own ModelRegistry in a
subprocess (importing vLLM takes seconds), with the answer cached.

The cache (CACHE_DIR/registry-<key>.json, RUNS_DIR/.cache by default) holds vLLM's whole list of supported
architectures. Its key covers the installed versions, the Python that asks, and the state of the
implementation roots and of the directories vllm / vllm_ascend are imported from (git HEAD and the
dirty files' content, or the directory's own mtime), so an edited registry.py or a new
model file is never answered from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import box, sourcetree
from helpers import evidence as ev
from helpers.serve import stop_child_group

REGISTRY_MARKER = "@@TRIAGE-REGISTRY@@"

_REGISTRY_PROBE = r"""
import json, sys
out = {"vllm_version": None, "plugins": [], "errors": []}
try:
    import vllm
    out["vllm_version"] = getattr(vllm, "__version__", None)
except Exception as exc:
    out["errors"].append("import vllm failed: %s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""))
    print(MARKER + json.dumps(out)); sys.exit(0)
try:
    from importlib.metadata import entry_points
    out["plugins"] = sorted(ep.name for ep in entry_points(group="vllm.general_plugins"))
    from vllm.plugins import load_general_plugins
    load_general_plugins()  # vllm-ascend registers its extra models here
except Exception as exc:
    out["errors"].append("plugins: %s: %s" % (type(exc).__name__, exc))
try:
    from vllm import ModelRegistry
    out["supported"] = sorted(ModelRegistry.get_supported_archs())
except Exception as exc:
    out["errors"].append("ModelRegistry: %s: %s" % (type(exc).__name__, exc))
print(MARKER + json.dumps(out))
""".replace("MARKER", repr(REGISTRY_MARKER))


@dataclass
class RegistryCheck:
    status: str  # registered | not-registered | unknown
    registered: bool | None
    architectures: dict[str, bool] = field(default_factory=dict)
    vllm_version: str | None = None
    plugins: list[str] = field(default_factory=list)
    method: str = "subprocess import of vllm.ModelRegistry"
    detail: str = ""
    elapsed_s: float | None = None


def check_of(answer: dict[str, Any], architectures: list[str], elapsed: float | None,
             method: str = "subprocess import of vllm.ModelRegistry") -> RegistryCheck:
    """A probe answer (fresh or cached) -> the check for these architectures."""
    errors = "; ".join(answer.get("errors") or [])
    supported = answer.get("supported")
    registered = answer.get("registered")  # older probes answered per architecture
    if supported is not None:
        registered = {a: a in set(supported) for a in architectures}
    if registered is None:
        return RegistryCheck(status="unknown", registered=None, vllm_version=answer.get("vllm_version"),
                             plugins=answer.get("plugins") or [], detail=errors, elapsed_s=elapsed, method=method)
    any_registered = any(registered.values()) if registered else False
    return RegistryCheck(status="registered" if any_registered else "not-registered", registered=any_registered,
                         architectures=registered, vllm_version=answer.get("vllm_version"),
                         plugins=answer.get("plugins") or [], detail=errors, elapsed_s=elapsed, method=method)


# --- the probe ------------------------------------------------------------------------------

def start_registry_probe() -> subprocess.Popen | None:
    """Start the slow vLLM import now; `finish_registry_probe` collects it after other work."""
    if not box.module_importable("vllm"):
        return None
    env = dict(os.environ, VLLM_LOGGING_LEVEL="ERROR", TQDM_DISABLE="1")
    return subprocess.Popen([sys.executable, "-c", _REGISTRY_PROBE], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def collect(process: subprocess.Popen | None, started: float, timeout: float) -> tuple[dict[str, Any] | None, str, float]:
    """(answer, why-not, elapsed) of a started probe."""
    if process is None:
        return None, "vllm is not importable in this Python", 0.0
    try:
        stdout, stderr = process.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        stop_child_group(process, grace=0)
        return None, f"vLLM import took over {timeout:.0f} s", round(time.monotonic() - started, 2)
    elapsed = round(time.monotonic() - started, 2)
    line = next((l for l in stdout.splitlines() if l.startswith(REGISTRY_MARKER)), None)
    if line is None:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"registry probe failed: {tail}", elapsed
    return json.loads(line[len(REGISTRY_MARKER):]), "", elapsed


def finish_registry_probe(process: subprocess.Popen | None, architectures: list[str], started: float,
                          timeout: float) -> RegistryCheck:
    answer, why, elapsed = collect(process, started, timeout)
    if answer is None:
        return RegistryCheck(status="unknown", registered=None, detail=why, elapsed_s=elapsed or None)
    return check_of(answer, architectures, elapsed)


# --- the cache ------------------------------------------------------------------------------

def tree_state(root: Path | None) -> str:
    """A fingerprint of a source tree: git HEAD + the dirty files' content (sourcetree.fingerprint),
    or (not a git work tree) the directory's mtime."""
    if root is None or not root.is_dir():
        return "absent"
    info = sourcetree.inspect(root)
    return info.fingerprint if info.git else f"dir {root.stat().st_mtime_ns}"


def cache_key(roots: dict[str, Path | None]) -> dict[str, Any]:
    """What a registry answer depends on: versions, the asking Python, and the source trees (the
    implementation roots and the directories vllm / vllm_ascend are imported from)."""
    trees = dict(roots)
    for package in ("vllm", "vllm-ascend"):
        source = box.package_source_dir(package)
        trees[f"{package} imported from"] = source.parent if source else None
    return {"python": sys.executable,
            "versions": box.installed_versions(("vllm", "vllm-ascend", "torch", "torch-npu", "transformers")),
            "trees": {name: str(path) for name, path in trees.items()},
            "states": {name: tree_state(path) for name, path in trees.items()}}


def cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"registry-{digest}.json"


class RegistryQuery:
    """Started early (the probe runs while triage reads headers), answered by `result`. Served
    from the cache when nothing the answer depends on changed."""

    def __init__(self, roots: dict[str, Path | None], cache_dir: Path) -> None:
        self.started = time.monotonic()
        self.key = cache_key(roots)
        self.path = cache_path(cache_dir, self.key)
        try:
            cached = ev.read_json(self.path)
        except (OSError, ValueError):
            cached = None
        self.cached = cached if isinstance(cached, dict) and cached.get("key") == self.key else None
        self.process = None if self.cached else start_registry_probe()

    def result(self, architectures: list[str], timeout: float = 120.0) -> RegistryCheck:
        if self.cached is not None:
            return check_of(self.cached["answer"], architectures, round(time.monotonic() - self.started, 2),
                            method=f"cached answer of vllm.ModelRegistry ({self.path.name}, {self.cached.get('created')})")
        answer, why, elapsed = collect(self.process, self.started, timeout)
        if answer is None:
            return RegistryCheck(status="unknown", registered=None, detail=why, elapsed_s=elapsed or None)
        if "supported" in answer:
            ev.atomic_write_json(self.path, {"key": self.key, "created": ev.utc_iso(), "answer": answer})
        return check_of(answer, architectures, elapsed)

    def cancel(self) -> None:
        """On an early exit: stop our own probe."""
        if self.process is not None and self.process.poll() is None:
            stop_child_group(self.process, grace=0)
