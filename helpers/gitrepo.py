"""Git work trees as the delivery sees them: run git, read the status, find where a branch
started, and turn a root's changes (committed since a base, or not yet committed, new files
included) into one patch. Read-only except where a caller applies or commits on purpose.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import sourcetree
from helpers.errors import EnvironmentProblem


def git(repo: Path, *args: str, check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, input=stdin)
    if check and result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
        raise EnvironmentProblem(f"git {' '.join(args[:2])} failed in {repo}: {last[0]}",
                                 "fix the repository state and retry")
    return result.stdout if result.returncode == 0 else ""


def ok(repo: Path, *args: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True).returncode == 0


def toplevel(path: Path) -> Path | None:
    """The work tree root holding `path`, or None when it is not in a git work tree."""
    top = sourcetree.toplevel(path)
    return top.resolve() if top else None


def status(repo: Path) -> list[tuple[str, str]]:
    """(two-letter status, path) of every staged, unstaged or untracked path."""
    out = git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    entries, found, index = out.split("\0"), [], 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":
            index += 1  # the rename source follows
        found.append((code, path))
    return found


def base_commit(repo: Path) -> str | None:
    """Where this branch started: its upstream, else the merge-base with the default branch
    (origin/HEAD, else a local main/master); None on the default branch without an upstream."""
    if ok(repo, "rev-parse", "--verify", "--quiet", "@{u}"):
        return git(repo, "merge-base", "HEAD", "@{u}").strip() or None
    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD", check=False).strip()
    candidates = []
    head_ref = git(repo, "symbolic-ref", "--quiet", "refs/remotes/origin/HEAD", check=False).strip()
    if head_ref:
        candidates.append(head_ref)
    candidates += [f"refs/heads/{name}" for name in ("main", "master") if name != branch]
    for ref in candidates:
        if ok(repo, "rev-parse", "--verify", "--quiet", ref):
            return git(repo, "merge-base", "HEAD", ref, check=False).strip() or None
    return None


def commits_touching(repo: Path, base: str | None, paths: list[str]) -> list[str]:
    """Commits of this branch (since base; the whole history without one) that touch `paths`."""
    if not ok(repo, "rev-parse", "--verify", "--quiet", "HEAD"):
        return []
    span = f"{base}..HEAD" if base else "HEAD"
    return git(repo, "log", "--format=%H", span, "--", *paths, check=False).split()


def is_tracked(root: Path, path: str) -> bool:
    return bool(git(root, "ls-files", "--", path, check=False).strip())


def patch_of(root: Path, base: str, paths: list[str]) -> str:
    """One patch of `paths` from `base` to the work tree: tracked files with `git diff base`,
    new untracked files as creations (git diff --no-index against /dev/null). Binary-safe."""
    tracked = [p for p in paths if is_tracked(root, p) or not (root / p).exists()]
    text = git(root, "diff", "--binary", base, "--", *tracked) if tracked else ""
    for path in paths:
        if path in tracked:
            continue
        result = subprocess.run(["git", "-C", str(root), "diff", "--binary", "--no-index", "--", "/dev/null", path],
                                capture_output=True, text=True)
        if result.returncode not in (0, 1):  # 1: the files differ, which they do
            raise EnvironmentProblem(f"git diff of the new file {path} failed in {root}: {result.stderr.strip()[:200]}",
                                     "check the file and retry")
        text += result.stdout
    return text
