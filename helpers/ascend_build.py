"""Which build of vllm-ascend (or vLLM) is really installed, from the version it reports.

A release reports its tag (`0.21.0rc1`, `0.13.0`). A source install between releases does not:
setuptools-scm describes from the last tag reachable from HEAD, and on main that tag is an old one
(main's last tag is v0.19.1rc1, so main reports `0.19.1rc2.dev1637+g182b75ea84`, fact
setuptools-scm-main-version), and a checkout without tags reports `0.0.0` (setup.py@main:431).
Such a number says nothing about which release's code is in it, so a version range must not be
read from it. A build that is not a release is placed by the git state of its root (VLLM_ASCEND_SRC)
when the root is here; otherwise it is an "unknown build" and only source markers decide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from helpers import sourcetree

# release [pre-release] [.postN] [.devN] [+local]: every form pip shows for these packages
VERSION = re.compile(r"^v?(?P<release>\d+(?:\.\d+)*)(?:\.?(?P<pre>a|b|rc)(?P<pre_n>\d+))?"
                     r"(?:\.?post(?P<post>\d+))?(?:\.?dev(?P<dev>\d+))?(?:\+(?P<local>[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*))?$")
UNTAGGED = "0.0.0"  # setup.py@main:431-432: setuptools-scm found no tag
MAIN = "main"
# releases/v0.26.0rc builds the 0.26.0 release candidates: placed at the first of them
RELEASE_BRANCH = re.compile(r"^(?:[\w-]+/)?releases/v(\d+(?:\.\d+)*)(rc)?")


@dataclass(frozen=True)
class Build:
    reported: str                # what the package metadata says
    release: str                 # the release part setuptools-scm wrote (`0.19.1rc2` of a dev build)
    dev: int | None = None       # commits since the tag it was described from
    local: str | None = None     # `g182b75ea84` (the commit), `d20261204` (a dirty tree), `cpu`, ...
    placed: str | None = None    # main | a release (`0.26.0`) | None: where the root's git state puts it
    placed_by: str = ""          # how that was decided

    @property
    def is_release(self) -> bool:
        """A tagged release (a local suffix alone keeps it one: a rebuilt or dirty tag)."""
        return self.dev is None and self.release != UNTAGGED

    @property
    def commit(self) -> str | None:
        match = re.match(r"g([0-9a-f]{7,40})\b", self.local or "")
        return match.group(1) if match else None

    @property
    def known(self) -> bool:
        return self.is_release or self.placed is not None

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """One line for a user: the reported version and what it means."""
        if self.is_release:
            return self.reported
        if self.placed == MAIN:
            return f"{self.reported} (a main-branch build: {self.placed_by})"
        if self.placed:
            return f"{self.reported} (a build of the {self.placed} release line: {self.placed_by})"
        return f"{self.reported} (unknown build: not a release, and no source root tells which branch)"


def parse(reported: str) -> Build:
    """Every form a real install reports; ValueError on anything else (never a silent guess)."""
    text = reported.strip()
    match = VERSION.match(text)
    if not match:
        raise ValueError(f"version {reported!r} is not understood (expected e.g. 0.21.0rc1, "
                         "0.19.1rc2.dev1637+g182b75ea84 or 0.0.0)")
    release = match.group("release") + (f"{match.group('pre')}{match.group('pre_n')}" if match.group("pre") else "")
    dev = match.group("dev")
    return Build(text, release, int(dev) if dev is not None else None, match.group("local"))


def place(build: Build, root: Path | None) -> Build:
    """A non-release build placed by the git state of its source root (branch, else the branches
    that contain HEAD); unchanged when the root is absent or says nothing."""
    if build.is_release or root is None or not root.is_dir():
        return build
    head = sourcetree.git(root, "rev-parse", "--abbrev-ref", "HEAD")  # cheap: no status of the tree
    if head is None:
        return build
    branch = head.strip()
    branches = [branch] if branch != "HEAD" else (sourcetree.git(  # detached: the branches holding HEAD
        root, "for-each-ref", "--contains", "HEAD", "--format=%(refname:short)", "refs/heads", "refs/remotes") or ""
    ).split()
    for branch in branches:
        if branch in (MAIN, "origin/main", "upstream/main"):
            return _placed(build, MAIN, f"{root} is on {branch}")
    for branch in branches:
        line = RELEASE_BRANCH.match(branch)
        if line:
            return _placed(build, line.group(1) + ("rc1" if line.group(2) else ""), f"{root} is on {branch}")
    return build


def _placed(build: Build, where: str, why: str) -> Build:
    return Build(build.reported, build.release, build.dev, build.local, where, why)


def identify(reported: str | None, root: Path | None = None) -> Build | None:
    """parse + place; None when the package is not installed."""
    return place(parse(reported), root) if reported else None
