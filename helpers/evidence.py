"""Evidence on disk: run directories that are never reused, files written atomically.

runs/<model>/<UTC stamp>-<step>/ holds command.sh, serve.log, requests.jsonl and
evidence.json. evidence.json is rewritten (atomically) as the run progresses, so a crash at any
point leaves valid JSON describing what was done.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

VERDICTS = ("PASS", "FAIL", "NOT_APPLICABLE", "CHECKPOINT_MISSING", "FRAMEWORK_UNSUPPORTED", "INTERRUPTED")


def utc_stamp(moment: float | None = None) -> str:
    return datetime.fromtimestamp(moment or time.time(), tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def utc_iso(moment: float | None = None) -> str:
    return datetime.fromtimestamp(moment or time.time(), tz=timezone.utc).isoformat(timespec="seconds")


def safe_name(text: str) -> str:
    """A directory-safe model name: keeps letters (any script), digits, dot, dash, underscore."""
    cleaned = re.sub(r"[^\w.\-]+", "_", text.strip(), flags=re.UNICODE).strip("._")
    return cleaned or "model"


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # evidence is meant to be read by colleagues and CI
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def model_runs_dir(runs_dir: str | Path, model_name: str) -> Path:
    return Path(runs_dir) / safe_name(model_name)


def new_run_dir(runs_dir: str | Path, model_name: str, step: str) -> Path:
    """Create a fresh directory; never reuse one, even for two runs in the same second."""
    parent = model_runs_dir(runs_dir, model_name)
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{utc_stamp()}-{safe_name(step)}"
    for attempt in range(1000):
        candidate = parent / (base if attempt == 0 else f"{base}.{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique run directory under {parent}")


def point_latest(run_dir: Path, step: str) -> None:
    """Move the `latest-<step>` link to this run (the link is an index, not evidence)."""
    link = run_dir.parent / f"latest-{safe_name(step)}"
    tmp = run_dir.parent / f".latest-{safe_name(step)}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def read_latest(model_runs: Path, step: str) -> dict[str, Any] | None:
    """evidence.json of the newest run of `step` (via its latest-<step> link), None if absent.
    Its run_dir is where the evidence is now (a copied or moved RUNS_DIR stays consistent)."""
    link = Path(model_runs) / f"latest-{safe_name(step)}"
    try:
        record = json.loads((link / "evidence.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(record, dict) and "run_dir" in record:
        record["run_dir"] = str(link.resolve())
    return record


def cached_json(cache_dir: Path, kind: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """compute(), kept in cache_dir/<kind>-<hash of key>.json and reused while the key is the same."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{kind}-{digest}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == json.loads(json.dumps(key, default=str)):
            return cached["value"]
    except (OSError, ValueError, AttributeError):
        pass
    value = compute()
    atomic_write_json(path, {"key": key, "created": utc_iso(), "value": value})
    return value


def iter_evidence(model_runs: Path, filename: str = "evidence.json") -> Iterator[tuple[Path, dict[str, Any]]]:
    """(run dir, record) of every recorded run of a model, in directory (time) order; latest-*
    links and unreadable files are skipped."""
    for path in sorted(Path(model_runs).glob(f"*/{filename}")):
        if path.parent.is_symlink():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict):
            yield path.parent, record


class JsonLines:
    """Append-only JSON lines (requests.jsonl); each line is flushed as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            handle.flush()
