"""Git work trees as facts: the implementation roots (VLLM_SRC, VLLM_ASCEND_SRC) and the delivery
repo. Read only: nothing here writes to a tree, its index or its objects.

`inspect` answers HEAD, branch and dirty files with one `git status --porcelain=v2 --branch`
call, so `make context` (run at the start of every stage) stays cheap; `changed_files` is the
per-file diff `make changes` classifies.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GIT_TIMEOUT = 30.0
# The two implementation roots (the workflow's /vllm-workspace/vllm and /vllm-workspace/vllm-ascend)
# and the setting that names each.
ROOT_SETTINGS = {"vllm": "VLLM_SRC", "vllm-ascend": "VLLM_ASCEND_SRC"}
# The vllm-ascend checkout shape (its package directory and the docs the delivery writes into).
VLLM_ASCEND_MARKERS = ("vllm_ascend", "docs/source/tutorials")


def implementation_roots(settings: Any) -> dict[str, Path | None]:
    """{"vllm": VLLM_SRC, "vllm-ascend": VLLM_ASCEND_SRC} from the settings."""
    return {"vllm": settings.vllm_src, "vllm-ascend": settings.vllm_ascend_src}


def git(root: Path, *args: str, timeout: float = GIT_TIMEOUT) -> str | None:
    """stdout of `git -C root ...`, or None when git fails (no repo, unknown revision, no git)."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def start_status(root: Path) -> subprocess.Popen | None:
    """Start `git status` now (the two roots and npu-smi are asked in parallel); `read_status`."""
    if not root.is_dir():
        return None
    try:
        return subprocess.Popen(["git", "-C", str(root), "status", "--porcelain=v2", "--branch", "-z",
                                 "--untracked-files=all"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return None


@dataclass
class TreeInfo:
    path: str
    exists: bool
    git: bool = False
    head: str | None = None
    branch: str | None = None          # None when detached
    dirty: list[str] = field(default_factory=list)   # "XY path" (git's porcelain codes, ?? untracked)
    fingerprint: str = ""              # HEAD + each dirty file's content: changes when the tree does
    error: str = ""

    @property
    def dirty_count(self) -> int:
        return len(self.dirty)

    def to_dict(self, max_dirty: int = 50) -> dict[str, Any]:
        data = asdict(self)
        data["dirty_count"] = len(self.dirty)
        data["dirty"] = self.dirty[:max_dirty]
        return data


def parse_status_v2(raw: bytes) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    """(head, branch, [(code, path)]) from `git status --porcelain=v2 --branch -z`."""
    head = branch = None
    entries: list[tuple[str, str]] = []
    parts = raw.decode("utf-8", "replace").split("\0")
    index = 0
    while index < len(parts):
        item = parts[index]
        index += 1
        if item.startswith("# branch.oid "):
            value = item.split(" ", 2)[2]
            head = None if value == "(initial)" else value
        elif item.startswith("# branch.head "):
            value = item.split(" ", 2)[2]
            branch = None if value == "(detached)" else value
        elif item.startswith("1 "):
            fields = item.split(" ", 8)
            entries.append((fields[1].replace(".", " "), fields[8]))
        elif item.startswith("2 "):
            fields = item.split(" ", 9)
            entries.append((fields[1].replace(".", " "), fields[9]))
            index += 1  # the original path of a rename follows
        elif item.startswith("u "):
            entries.append(("UU", item.split(" ", 10)[10]))
        elif item.startswith("? "):
            entries.append(("??", item[2:]))
    return head, branch, entries


# Dirty files up to this size are fingerprinted by content: a file saved again unchanged, or put
# back as it was, is the same tree (a keymap or a PASS made on it still holds); larger ones by stat.
CONTENT_HASH_LIMIT = 4 << 20


def fingerprint(root: Path, head: str | None, entries: list[tuple[str, str]]) -> str:
    """The dirty files' content (size and mtime above CONTENT_HASH_LIMIT), on top of HEAD."""
    parts = [head or "(no commit)"]
    for code, path in sorted(entries, key=lambda e: e[1]):
        file = root / path
        try:
            stat = file.stat()
            if file.is_file() and stat.st_size <= CONTENT_HASH_LIMIT:
                parts.append(f"{code}:{path}:{hashlib.sha256(file.read_bytes()).hexdigest()}")
            else:
                parts.append(f"{code}:{path}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{code}:{path}:gone")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def read_status(path: Path, process: subprocess.Popen | None) -> TreeInfo:
    if not path.is_dir():
        return TreeInfo(str(path), False, error="does not exist")
    if process is None:
        return TreeInfo(str(path), True, error="git could not be started")
    try:
        out, _ = process.communicate(timeout=GIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return TreeInfo(str(path), True, error=f"git status took over {GIT_TIMEOUT:.0f} s")
    if process.returncode != 0:
        return TreeInfo(str(path), True, error="not a git work tree")
    head, branch, entries = parse_status_v2(out)
    top = git(path, "rev-parse", "--show-toplevel")
    root = Path(top.strip()) if top else path
    return TreeInfo(str(path), True, True, head, branch, [f"{code} {name}" for code, name in entries],
                    fingerprint(root, head, entries))


def inspect(path: Path) -> TreeInfo:
    return read_status(path, start_status(path))


def toplevel(path: Path) -> Path | None:
    top = git(path, "rev-parse", "--show-toplevel") if path.is_dir() else None
    return Path(top.strip()) if top else None


def vllm_ascend_checkout(path: Path) -> Path | None:
    """The git work tree containing `path` when it is shaped like a vllm-ascend checkout."""
    top = toplevel(path)
    if top is not None and all((top / marker).is_dir() for marker in VLLM_ASCEND_MARKERS):
        return top
    return None


def commit_exists(root: Path, commit: str) -> bool:
    return git(root, "cat-file", "-e", f"{commit}^{{commit}}") is not None


# --- per-file changes -------------------------------------------------------------------------

@dataclass
class FileChange:
    path: str                  # relative to the work tree's top
    status: str                # A | M | D | R | ?? (untracked)
    added: int = 0
    removed: int = 0
    binary: bool = False
    old_path: str | None = None
    uncommitted: bool = True   # False: the change is already in a commit made after the base


def _split_z(text: str) -> list[str]:
    return [part for part in text.split("\0")]


def changed_files(root: Path, base: str) -> list[FileChange]:
    """Every file that differs between `base` and the work tree (staged, unstaged and committed
    since base) plus untracked files, with line counts. Renames are detected (-M)."""
    changes: dict[str, FileChange] = {}
    status = git(root, "diff", "-M", "--name-status", "-z", base, "--") or ""
    parts = _split_z(status)
    index = 0
    while index < len(parts) and parts[index]:
        code = parts[index]
        if code[0] in "RC":
            old, new = parts[index + 1], parts[index + 2]
            changes[new] = FileChange(new, "R" if code[0] == "R" else "A", old_path=old)
            index += 3
        else:
            path = parts[index + 1]
            changes[path] = FileChange(path, code[0] if code[0] in "AMD" else "M")
            index += 2
    numstat = git(root, "diff", "-M", "--numstat", "-z", base, "--") or ""
    parts = _split_z(numstat)
    index = 0
    while index < len(parts) and parts[index]:
        counts = parts[index].split("\t")
        if len(counts) == 3 and counts[2]:
            path, index = counts[2], index + 1
        else:  # a rename: "added\tremoved\t" then old\0new
            path, index = parts[index + 2], index + 3
        change = changes.get(path)
        if change is not None:
            change.binary = counts[0] == "-"
            change.added = 0 if change.binary else int(counts[0])
            change.removed = 0 if change.binary else int(counts[1])
    for path in filter(None, _split_z(git(root, "ls-files", "--others", "--exclude-standard", "-z") or "")):
        change = FileChange(path, "??")
        try:
            data = (root / path).read_bytes()
            change.binary = b"\0" in data[:8192]
            change.added = 0 if change.binary else data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        except OSError:
            pass
        changes[path] = change
    in_work_tree = set(filter(None, _split_z(git(root, "diff", "--name-only", "-z", "HEAD", "--") or "")))
    for change in changes.values():
        change.uncommitted = change.status == "??" or change.path in in_work_tree or (
            change.old_path is not None and change.old_path in in_work_tree)
    return [changes[key] for key in sorted(changes)]


def diffstat(changes: list[FileChange]) -> str:
    """`git diff --stat` as git prints it, untracked files included (git leaves them out)."""
    if not changes:
        return "no changes"
    width = max(len(c.path) for c in changes)
    biggest = max((c.added + c.removed for c in changes), default=0) or 1
    scale = min(1.0, 40 / biggest)
    lines = []
    for c in changes:
        if c.binary:
            lines.append(f" {c.path.ljust(width)} | Bin")
            continue
        plus, minus = round(c.added * scale), round(c.removed * scale)
        lines.append(f" {c.path.ljust(width)} | {c.added + c.removed:4d} {'+' * plus}{'-' * minus}".rstrip())
    added, removed = sum(c.added for c in changes), sum(c.removed for c in changes)
    summary = f" {len(changes)} file{'s' if len(changes) != 1 else ''} changed"
    if added:
        summary += f", {added} insertion{'s' if added != 1 else ''}(+)"
    if removed:
        summary += f", {removed} deletion{'s' if removed != 1 else ''}(-)"
    return "\n".join(lines + [summary])
