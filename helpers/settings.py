"""Run settings: env.example defaults < .env < environment < command-line options.

env.example is the one place variables are documented; this module reads its defaults so the
Makefile, the scripts and the helpers never disagree about them. Every variable is parsed here,
once, into a typed field (paths made absolute against the directory make was started from), so
no step parses a setting of its own and a bad value is refused with one line before anything runs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from helpers.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent
_ASSIGNMENT = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*(?:\?=|:=|=)\s*(.*?)\s*$")
_TRUE = ("1", "true", "yes", "on")


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


# --- parsers: one per kind of value ----------------------------------------------------------

def parse_length(text: str, what: str = "length") -> int:
    """vLLM's own spellings: 131072, 128k (=128000), 128K (=131072)."""
    match = re.fullmatch(r"(\d+)([kKmM]?)", text.strip())
    if not match:
        raise UsageError(f"{what}={text!r} is not a length", "use e.g. 4096, 128k or 128K")
    scale = {"": 1, "k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}[match.group(2)]
    return int(match.group(1)) * scale


def _text(values: dict[str, str], key: str, default: str = "") -> str:
    return values.get(key, default).strip()


def _int(values: dict[str, str], key: str, *, minimum: int = 0) -> int | None:
    text = _text(values, key)
    if not text:
        return None
    if not re.fullmatch(r"\d+", text):
        raise UsageError(f"{key}={text!r} is not a whole number", f"set {key} to e.g. {minimum or 1}")
    number = int(text)
    if number < minimum:
        raise UsageError(f"{key}={number} is below {minimum}", f"set {key} to {minimum} or more")
    return number


def _length(values: dict[str, str], key: str) -> int | None:
    text = _text(values, key)
    return parse_length(text, key) if text else None


def _path(values: dict[str, str], key: str, base: Path) -> Path | None:
    """An absolute path (relative ones resolve against `base`, where make was started)."""
    text = _text(values, key)
    if not text:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path)


def _choice(values: dict[str, str], key: str, default: str, allowed: tuple[str, ...], hint: str) -> str:
    text = _text(values, key).lower() or default
    if text not in allowed:
        raise UsageError(f"{key}={text!r} is unknown", hint)
    return text


def _sweep(values: dict[str, str]) -> list[int] | str | None:
    """SWEEP="16 32 64" (spaces or commas) -> [16, 32, 64]; "max"/"all" -> "max"; empty -> None."""
    text = _text(values, "SWEEP")
    if not text:
        return None
    if text.lower() in ("max", "all"):
        return "max"
    parts = [p for p in re.split(r"[\s,]+", text) if p]
    if not all(re.fullmatch(r"\d+", p) and int(p) > 0 for p in parts):
        raise UsageError(f"SWEEP={text!r} is not a list of max-num-seqs values", 'use e.g. SWEEP="16 32 64" or SWEEP=max')
    unique: list[int] = []
    for value in (int(p) for p in parts):
        if value not in unique:
            unique.append(value)
    return unique


def _tasks(values: dict[str, str]) -> list[str]:
    return [t.strip() for t in re.split(r"[,\s]+", values.get("TASKS", "")) if t.strip()]


def _limit(values: dict[str, str]) -> int | float | None:
    text = _text(values, "LIMIT")
    if not text:
        return None
    if not re.fullmatch(r"\d+|0?\.\d+", text):
        raise UsageError(f"LIMIT={text!r} is neither a count nor a fraction below 1",
                         "set LIMIT=50 (samples per task) or LIMIT=0.1, or leave it empty for all")
    return float(text) if "." in text else int(text)


def _fraction(values: dict[str, str], key: str) -> float | None:
    """A fraction of the device memory in (0, 1] (vLLM's --gpu-memory-utilization)."""
    text = _text(values, key)
    if not text:
        return None
    if not re.fullmatch(r"0?\.\d+|1(?:\.0*)?", text) or float(text) <= 0:
        raise UsageError(f"{key}={text!r} is not a fraction in (0, 1]", f"set {key}=0.85, or leave it empty")
    return float(text)


def _fewshot(values: dict[str, str]) -> int | None:
    text = _text(values, "NUM_FEWSHOT")
    if text and not text.isdigit():
        raise UsageError(f"NUM_FEWSHOT={text!r} is not a whole number", "set NUM_FEWSHOT=5 (or 0)")
    return int(text) if text else None


def _npu_group(values: dict[str, str]) -> str:
    text = _text(values, "NPU_GROUP").replace(" ", "")
    if text and not re.fullmatch(r"\d+(,\d+)*", text):
        raise UsageError(f"NPU_GROUP={text!r} is not a comma-separated list of device numbers", "e.g. NPU_GROUP=4,5,6,7")
    return text


@dataclass
class Settings:
    model: str = ""
    model_root: Path = Path("/models")
    served_name: str = ""
    backend: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    tp: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    dtype: str = ""
    extra_args: str = ""
    api_key: str = ""
    runs_dir: Path = field(default_factory=lambda: Path("runs").absolute())
    cache_dir: Path = field(default_factory=lambda: Path("runs/.cache").absolute())
    work_dir: str = ""
    ready_timeout: int = 1200
    stall_timeout: int = 300
    request_timeout: int = 120
    stage: str = "b"
    junit: Path | None = None
    vllm_src: Path | None = None
    vllm_ascend_src: Path | None = None
    triage_json: bool = False
    json_output: bool = False  # JSON=1: make context / changes / status print their JSON record
    ladder_dynamo: str = "auto"
    log: Path | None = None
    sweep: list[int] | str | None = None
    force: bool = False
    tasks: list[str] = field(default_factory=lambda: ["gsm8k"])
    num_fewshot: int | None = None
    limit: int | float | None = None
    dataset_dir: Path | None = None
    serve_as: str = "documented"
    accept_fallback: str = ""  # a fallback mode the engineer accepts for sign-off (eager | dynamo | xlite)
    capacity_not_feasible: str = ""  # why the capacity baseline cannot be run (recorded by make capacity)
    delivery_repo: Path | None = None
    issue_url: str = ""
    model_id: str = ""
    tiny_dir: Path | None = None
    tiny_kind: str = "dense"
    tiny_weights: str = "real"
    # runs at once (None: as many disjoint NPU groups as are free), this run's NPUs and HCCL ports
    parallel: int | None = None
    npu_group: str = ""
    hccl_base_port: int | None = None
    # the variables given on make's command line (Makefile: BRINGUP_GIVEN), carried into `next:` commands
    given: dict[str, str] = field(default_factory=dict)
    # names this invocation in the state files, so its EXIT trap stops only its own servers
    run_token: str = field(default_factory=lambda: f"pid-{os.getpid()}")


def load(overrides: dict[str, str | None] | None = None) -> Settings:
    values = raw_values(overrides)
    base = Path.cwd()
    runs_dir = _path(values, "RUNS_DIR", base) or base / "runs"
    port = _int(values, "PORT", minimum=1)
    if port is not None and port > 65535:
        raise UsageError(f"PORT={port} is not a TCP port", "use 1-65535")
    stage = _choice(values, "STAGE", "b", ("a", "b"),
                    "use STAGE=a (dummy weights) or STAGE=b (real weights)")
    return Settings(
        model=_text(values, "MODEL"),
        model_root=_path(values, "MODEL_ROOT", base) or Path("/models"),
        served_name=_text(values, "SERVED_NAME"),
        backend=_text(values, "BACKEND").lower(),
        host=_text(values, "HOST") or "127.0.0.1",
        port=port if port is not None else 8000,
        tp=_int(values, "TP", minimum=1),
        max_model_len=_length(values, "MAX_MODEL_LEN"),
        max_num_seqs=_int(values, "MAX_NUM_SEQS", minimum=1),
        gpu_memory_utilization=_fraction(values, "GPU_MEMORY_UTILIZATION"),
        dtype=_text(values, "DTYPE"),
        extra_args=values.get("EXTRA_ARGS", ""),
        api_key=values.get("VLLM_API_KEY", ""),
        runs_dir=runs_dir,
        cache_dir=_path(values, "CACHE_DIR", base) or runs_dir / ".cache",
        work_dir=_text(values, "WORK_DIR"),
        ready_timeout=_int(values, "READY_TIMEOUT", minimum=1) or 1200,
        stall_timeout=_int(values, "STALL_TIMEOUT", minimum=1) or 300,
        request_timeout=_int(values, "REQUEST_TIMEOUT", minimum=1) or 120,
        stage=stage,
        junit=_path(values, "JUNIT", base),
        vllm_src=_path(values, "VLLM_SRC", base),
        vllm_ascend_src=_path(values, "VLLM_ASCEND_SRC", base),
        triage_json=_text(values, "TRIAGE_JSON").lower() in _TRUE,
        json_output=_text(values, "JSON").lower() in _TRUE,
        ladder_dynamo=_choice(values, "LADDER_DYNAMO", "auto", ("auto", "always"), "use auto or always"),
        log=_path(values, "LOG", base),
        sweep=_sweep(values),
        force=_text(values, "FORCE").lower() in _TRUE,
        tasks=_tasks(values),
        num_fewshot=_fewshot(values),
        limit=_limit(values),
        dataset_dir=_path(values, "DATASET_DIR", base),
        serve_as=_choice(values, "SERVE_AS", "documented", ("documented", "base"),
                         "use SERVE_AS=documented (like the documented run) or base (the plain Stage B command)"),
        delivery_repo=_path(values, "DELIVERY_REPO", base),
        issue_url=_text(values, "ISSUE_URL"),
        capacity_not_feasible=_text(values, "CAPACITY_NOT_FEASIBLE"),
        accept_fallback=_choice(values, "ACCEPT_FALLBACK", "", ("", "eager", "dynamo", "xlite"),
                                "use ACCEPT_FALLBACK=eager, dynamo or xlite (text-only isolates, it never signs off)"),
        model_id=_text(values, "MODEL_ID"),
        tiny_dir=_path(values, "TINY_DIR", base),
        tiny_kind=_text(values, "TINY_KIND") or "dense",
        tiny_weights=_text(values, "TINY_WEIGHTS") or "real",
        parallel=_int(values, "PARALLEL", minimum=1),
        npu_group=_npu_group(values),
        hccl_base_port=_int(values, "HCCL_BASE_PORT", minimum=1),
        run_token=os.environ.get("BRINGUP_RUN_TOKEN") or f"pid-{os.getpid()}",
        given={name: values.get(name, "") for name in os.environ.get("BRINGUP_GIVEN", "").split() if name in values},
    )


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]
