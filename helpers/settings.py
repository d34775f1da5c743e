"""Run settings: env.example defaults < .env < environment < command-line options.

env.example is the one place variables are documented; this module reads its defaults so the
Makefile, the scripts and the helpers never disagree about them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from helpers.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent
_ASSIGNMENT = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*(?:\?=|:=|=)\s*(.*?)\s*$")


def parse_env_file(path: Path) -> dict[str, str]:
    """Read `KEY ?= value` / `KEY=value` lines (make and shell compatible); comments skipped."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = _ASSIGNMENT.match(line)
        if match:
            values.setdefault(match.group(1), match.group(2))
    return values


def documented_variables() -> dict[str, str]:
    return parse_env_file(REPO_ROOT / "env.example")


def raw_values(overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    values = documented_variables()
    values.update(parse_env_file(REPO_ROOT / ".env"))
    for key in list(values):
        if key in os.environ:
            values[key] = os.environ[key]
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = str(value)
    return values


def _int(values: dict[str, str], key: str, *, minimum: int = 0) -> int | None:
    text = values.get(key, "").strip()
    if not text:
        return None
    if not re.fullmatch(r"\d+", text):
        raise UsageError(f"{key}={text!r} is not a whole number", f"set {key} to e.g. {minimum or 1}")
    number = int(text)
    if number < minimum:
        raise UsageError(f"{key}={number} is below {minimum}", f"set {key} to {minimum} or more")
    return number


def _length(values: dict[str, str], key: str) -> int | None:
    """Accept vLLM's own spellings: 131072, 128k (=128000), 128K (=131072)."""
    text = values.get(key, "").strip()
    if not text:
        return None
    match = re.fullmatch(r"(\d+)([kKmM]?)", text)
    if not match:
        raise UsageError(f"{key}={text!r} is not a length", "use e.g. 4096, 128k or 128K")
    number, suffix = int(match.group(1)), match.group(2)
    scale = {"": 1, "k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}[suffix]
    return number * scale


@dataclass
class Settings:
    model: str = ""
    model_root: str = "/models"
    served_name: str = ""
    backend: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    tp: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    dtype: str = ""
    extra_args: str = ""
    api_key: str = ""
    runs_dir: str = "runs"
    work_dir: str = ""
    ready_timeout: int = 1200
    stall_timeout: int = 300
    request_timeout: int = 120
    stage: str = "b"
    junit: str = ""
    vllm_src: str = ""
    vllm_ascend_src: str = ""
    raw: dict[str, str] = field(default_factory=dict, repr=False)

    def get(self, key: str, default: str = "") -> str:
        return self.raw.get(key, default)


def load(overrides: dict[str, str | None] | None = None) -> Settings:
    values = raw_values(overrides)
    port = _int(values, "PORT", minimum=1)
    if port is not None and port > 65535:
        raise UsageError(f"PORT={port} is not a TCP port", "use 1-65535")
    stage = values.get("STAGE", "b").strip().lower() or "b"
    if stage not in ("a", "b"):
        raise UsageError(f"STAGE={stage!r} is unknown", "use STAGE=a (dummy weights) or STAGE=b (real weights)")
    settings = Settings(
        model=values.get("MODEL", "").strip(),
        model_root=values.get("MODEL_ROOT", "/models").strip(),
        served_name=values.get("SERVED_NAME", "").strip(),
        backend=values.get("BACKEND", "").strip().lower(),
        host=values.get("HOST", "127.0.0.1").strip() or "127.0.0.1",
        port=port if port is not None else 8000,
        tp=_int(values, "TP", minimum=1),
        max_model_len=_length(values, "MAX_MODEL_LEN"),
        max_num_seqs=_int(values, "MAX_NUM_SEQS", minimum=1),
        dtype=values.get("DTYPE", "").strip(),
        extra_args=values.get("EXTRA_ARGS", ""),
        api_key=values.get("VLLM_API_KEY", ""),
        runs_dir=values.get("RUNS_DIR", "runs").strip() or "runs",
        work_dir=values.get("WORK_DIR", "").strip(),
        ready_timeout=_int(values, "READY_TIMEOUT", minimum=1) or 1200,
        stall_timeout=_int(values, "STALL_TIMEOUT", minimum=1) or 300,
        request_timeout=_int(values, "REQUEST_TIMEOUT", minimum=1) or 120,
        stage=stage,
        junit=values.get("JUNIT", "").strip(),
        vllm_src=values.get("VLLM_SRC", "").strip(),
        vllm_ascend_src=values.get("VLLM_ASCEND_SRC", "").strip(),
        raw=values,
    )
    return settings


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings) if f.name != "raw"]
