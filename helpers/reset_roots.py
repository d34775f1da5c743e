"""`make reset-roots CONFIRM=yes`: put the implementation roots (VLLM_SRC, VLLM_ASCEND_SRC) back
to their HEAD, as the workflow does between models, on explicit request only.

Nothing typed in a root is lost: before a root is touched, its diff against HEAD (staged and
unstaged, binary-safe) and a copy of every untracked file are saved under
RUNS_DIR/implementation-roots/<UTC stamp>-reset-roots/ with a manifest of what was there. A root whose saving
fails is not reset. Ignored files (build outputs) are neither saved nor removed.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from helpers import evidence as ev
from helpers import sourcetree
from helpers.errors import EnvironmentProblem, UsageError
from helpers.settings import Settings

EVIDENCE_OWNER = "implementation-roots"  # evidence of the roots, not of a model
CONFIRMED = "yes"


@dataclass
class RootReset:
    name: str
    setting: str
    path: str | None
    head: str | None = None
    branch: str | None = None
    dirty: list[str] = field(default_factory=list)
    saved_diff: str | None = None
    saved_untracked: list[str] = field(default_factory=list)
    reset: bool = False
    note: str = ""


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=sourcetree.GIT_TIMEOUT)
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise EnvironmentProblem(f"git {' '.join(args[:2])} failed in {root}: {why[-1] if why else done.returncode}")
    return done


def save(root: Path, name: str, out: Path, record: RootReset) -> None:
    """The diff against HEAD and the untracked files of one root, under `out`."""
    diff = _git(root, "diff", "HEAD", "--binary").stdout
    if diff:
        target = out / f"{name}.diff"
        target.write_bytes(diff)
        record.saved_diff = str(target)
    listing = _git(root, "ls-files", "--others", "--exclude-standard", "-z").stdout.decode("utf-8", "replace")
    for relative in filter(None, listing.split("\0")):
        target = out / f"{name}-untracked" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target, follow_symlinks=False)
        record.saved_untracked.append(relative)


def reset_roots(settings: Settings, confirm: str, out: Callable[[str], None] = print) -> Path | None:
    """Save, then reset each dirty root; the directory holding what was saved (None: nothing to do)."""
    if confirm.strip().lower() != CONFIRMED:
        raise UsageError("make reset-roots discards the uncommitted changes of VLLM_SRC and VLLM_ASCEND_SRC: "
                         "it runs only with CONFIRM=yes",
                         "see them first with `make context`, then run `make reset-roots CONFIRM=yes`")
    records: list[RootReset] = []
    for name, path in sourcetree.implementation_roots(settings).items():
        record = RootReset(name, sourcetree.ROOT_SETTINGS[name], str(path) if path else None)
        records.append(record)
        info = sourcetree.inspect(path) if path is not None else None
        if info is None or not info.git:
            record.note = "not set" if path is None else (info.error if info else "") or "not a git work tree"
            continue
        record.head, record.branch, record.dirty = info.head, info.branch, list(info.dirty)
        if not info.dirty:
            record.note = "clean: nothing to save or reset"
    dirty = [r for r in records if r.dirty]
    saved_to: Path | None = None
    if dirty:
        saved_to = ev.new_run_dir(settings.runs_dir, EVIDENCE_OWNER, "reset-roots")
        for record in dirty:
            root = Path(str(record.path))
            top = sourcetree.toplevel(root) or root
            save(top, record.name, saved_to, record)
            _git(top, "reset", "--hard", "HEAD")
            _git(top, "clean", "-fd")  # untracked, not ignored: saved above
            record.reset = True
            record.note = (f"reset to {str(record.head)[:12]}; saved {len(record.saved_untracked)} untracked "
                           f"file(s){' and the diff' if record.saved_diff else ''}")
        ev.atomic_write_json(saved_to / "reset-roots.json", {"at": ev.utc_iso(), "roots": [_dict(r) for r in records]})
    for record in records:
        out(f"reset-roots: {record.setting}={record.path or '-'}: {record.note}")
    if saved_to is not None:
        out(f"reset-roots: saved under {saved_to} (git apply {saved_to}/<root>.diff to get the changes back)")
    return saved_to


def _dict(record: RootReset) -> dict[str, Any]:
    return asdict(record)
