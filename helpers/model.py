"""MODEL, resolved once: the checkpoint, its config and facts, and where its evidence lives.

Every step takes a Model instead of resolving MODEL itself, so a symlinked MODEL, a name under
MODEL_ROOT and a path all lead to the same RUNS_DIR/<name>/ directory in every step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from helpers import checkpoint as ckpt
from helpers import evidence as ev
from helpers.errors import UsageError
from helpers.settings import Settings


@dataclass(frozen=True)
class Model:
    requested: str          # MODEL as the user gave it (commands repeat it that way)
    path: Path | None       # the checkpoint directory (None: only its evidence is here)
    name: str               # RUNS_DIR/<name>/, from the resolved checkpoint directory
    runs_dir: Path          # RUNS_DIR/<name>
    served_name: str
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def facts(self) -> ckpt.ConfigFacts:
        return ckpt.config_facts(self.config)

    @property
    def multimodal(self) -> bool:
        return bool(self.facts.multimodal.get("is_multimodal"))

    @property
    def checkpoint(self) -> Path:
        """The checkpoint directory; steps that serve or read weights need it."""
        if self.path is None:
            raise UsageError(f"MODEL={self.requested}: no checkpoint directory here",
                             "check the name, or set MODEL_ROOT / pass a path")
        return self.path


def find_checkpoint(settings: Settings) -> Path:
    """MODEL as a path if it exists, else MODEL_ROOT/MODEL. One clear UsageError line otherwise."""
    model = settings.model.strip()
    if not model:
        raise UsageError("MODEL is not set", "run e.g. make triage MODEL=Qwen3-8B (a name under MODEL_ROOT or a path)")
    direct = Path(model).expanduser()
    candidates = [direct] if direct.is_absolute() else [direct, settings.model_root / model]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
        if candidate.exists():
            raise UsageError(f"MODEL={model}: {candidate} is not a directory", "point MODEL at the checkpoint directory")
    looked = " or ".join(str(c) for c in candidates)
    raise UsageError(f"MODEL={model}: no checkpoint directory at {looked}",
                     "check the name, or set MODEL_ROOT / pass a path")


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise UsageError(f"no config.json in {directory}", "point MODEL at a Hugging Face checkpoint directory")
    try:
        config = ckpt.read_json(path, "config")
    except ckpt.CheckpointError as exc:
        raise UsageError(str(exc), "fix or re-download config.json") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} is not a JSON object", "fix or re-download config.json")
    return config


def resolve(settings: Settings, *, evidence_only: bool = False) -> Model:
    """The Model of MODEL. With evidence_only (report, matrix, status), a checkpoint that is not
    on this box is fine as long as RUNS_DIR holds its evidence."""
    try:
        path = find_checkpoint(settings)
    except UsageError as no_checkpoint:
        if not evidence_only or not settings.model.strip():
            raise
        name = ev.safe_name(Path(settings.model).name)
        runs = ev.model_runs_dir(settings.runs_dir, name)
        if not runs.is_dir():
            # a typo in MODEL looks like this too: name both places looked at
            raise UsageError(f"no evidence for {settings.model!r}: {runs} does not exist, and {no_checkpoint.message}",
                             "check the name (MODEL_ROOT, RUNS_DIR), or run `make stage-a` first") from None
        return Model(settings.model, None, name, runs, settings.served_name or Path(settings.model).name)
    name = ev.safe_name(path.name)
    config = read_config(path)
    return Model(settings.model, path, name, ev.model_runs_dir(settings.runs_dir, name),
                 settings.served_name or path.name, config)


WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.index.json")


def checkpoint_fingerprint(path: Path) -> dict[str, Any]:
    """What a run depended on in the checkpoint: config.json's content hash and the weight files'
    names, sizes and mtimes (stat only, no tensor read). Recorded by `make context`; `make status`
    compares it with today's to say a run is stale."""
    try:
        config_sha = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:16]
    except OSError:
        config_sha = None
    parts, total = [], 0
    for file in sorted({p for pattern in WEIGHT_GLOBS for p in path.glob(pattern)}):
        try:
            stat = file.stat()
        except OSError:
            continue
        total += stat.st_size
        parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return {"config_sha256": config_sha, "weight_files": len(parts), "weight_bytes": total,
            "weights_sha256": hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16] if parts else None}
