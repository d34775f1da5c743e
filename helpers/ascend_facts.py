"""The sourced table of version-dependent Ascend facts (helpers/ascend_facts.yaml).

Each fact says what is true, for which package versions, and where that was checked. The signature
catalog points at facts with `fact: <id>`; feature rules and profiles can ask `holds_for()` instead
of carrying their own version numbers. Loading validates the table: a fact without a source, with a
source in no known form or with a range that does not parse is an error, not a silent default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable


from helpers import load_yaml
from helpers import ascend_build

FACTS_PATH = Path(__file__).with_name("ascend_facts.yaml")
PACKAGES = ("vllm-ascend", "vllm", "cann", "torch-npu")
MAIN_ONLY = "main-only"
# path@ref[:line[-line]] | [vllm |vllm-ascend ]PR/issue #N | commit <sha> | doc: <vendor document>
SOURCE_FORMS = re.compile(
    r"^(?:[\w./-]+@[\w.+/-]+(?::\d+(?:-\d+)?)?"
    r"|(?:vllm |vllm-ascend )?(?:PR|issue) #\d+"
    r"|commit [0-9a-f]{7,40}"
    r"|doc: \S.*)$"
)
CLAUSE = re.compile(r"^(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?)$")
VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:(a|b|rc)(\d+))?$")
AFTER_EVERY_RELEASE = ((1 << 30,), 3, 0)  # where a main-branch build sorts: past every release branch
ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_PRE_RANK = {"a": 0, "b": 1, "rc": 2, None: 3}  # a final release sorts after its pre-releases


@dataclass(frozen=True)
class Fact:
    id: str
    statement: str
    package: str | None      # None for main-only
    range: str               # "*" (any), PEP 440 style clauses, or "main-only"
    source: tuple[str, ...]
    verified: bool
    note: str = ""
    # a list the statement names (e.g. the architectures a graph mode covers), for rules to read
    values: tuple[str, ...] = ()
    # texts in the installed package's source that decide the fact before any version: ((text, the
    # fact needs it present), ...), all must hold. Source builds between releases report no usable version.
    marker: tuple[tuple[str, bool], ...] = ()

    @property
    def main_only(self) -> bool:
        return self.range == MAIN_ONLY

    def holds_for(self, version: str | ascend_build.Build | None, *, main: bool = False) -> bool | None:
        """True/False for an installed version; None when it is unknown: not installed, or a build
        between releases (`.devN`, `0.0.0`) that its root's git state did not place. `main=True`
        (or a Build placed on main) means a main-branch build, past every release branch."""
        if self.range == "*" and not self.main_only:
            return None if version is None and not main else True
        build = ascend_build.parse(version) if isinstance(version, str) else version
        on_main = main or (build is not None and build.placed == ascend_build.MAIN)
        if self.main_only:
            return True if on_main else (False if build is not None and build.known else None)
        if on_main:
            return _key_in(AFTER_EVERY_RELEASE, self.range)
        if build is None:
            return None
        if build.is_release:
            return version_in(build.release, self.range)
        return version_in(build.placed, self.range) if build.placed else None

    def decide(self, version: str | ascend_build.Build | None,
               source_contains: Callable[[str, str], bool | None] | None = None) -> tuple[bool | None, str]:
        """Whether the fact holds on this box and why: its source marker first (what the installed
        code contains), else the version; (None, why) when neither can tell."""
        if self.marker and source_contains is not None:
            package = self.package or "vllm-ascend"
            seen = [(text, wanted, source_contains(package, text)) for text, wanted in self.marker]
            if all(present is not None for _text, _wanted, present in seen):
                said = " and ".join(f"{'contains' if present else 'lacks'} {text!r}" for text, _w, present in seen)
                return all(present == wanted for _t, wanted, present in seen), \
                    f"installed {package} source {said} (fact {self.id})"
        try:
            build = ascend_build.parse(version) if isinstance(version, str) else version
        except ValueError as exc:
            return None, f"{exc}: the fact {self.id} cannot be decided by version"
        held = self.holds_for(build)
        if held is None:
            shown = build.describe() if build is not None else "not installed"
            return None, f"{self.package or 'vllm-ascend'} {shown}: the fact {self.id} cannot be decided"
        return held, f"{self.package} {build.describe() if build else ''} is {'in' if held else 'outside'} " \
                     f"{self.range} (fact {self.id}: {self.source[0]})"


def version_key(version: str) -> tuple[tuple[int, ...], int, int]:
    """Sort key for `0.20.2rc1`-style versions (release padded to 3 parts, then pre-release)."""
    m = VERSION.match(version.strip())
    if not m:
        raise ValueError(f"version {version!r} is not understood")
    release = tuple(int(x) for x in m.group(1).split("."))
    release = release + (0,) * (3 - len(release)) if len(release) < 3 else release
    return release, _PRE_RANK[m.group(2)], int(m.group(3) or 0)


def parse_range(spec: str) -> list[tuple[str, str]]:
    """`>=0.20.2rc1,<0.27` -> [(">=", "0.20.2rc1"), ("<", "0.27")]; `*` -> []. ValueError if malformed."""
    if spec.strip() == "*":
        return []
    clauses = []
    for part in spec.split(","):
        m = CLAUSE.match(part.strip())
        if not m:
            raise ValueError(f"range {spec!r}: clause {part.strip()!r} is not `<op><version>`")
        clauses.append((m.group(1), m.group(2)))
    if not clauses:
        raise ValueError(f"range {spec!r} is empty")
    return clauses


def version_in(version: str, spec: str) -> bool:
    """Whether a release (`0.20.2rc1`) is in a range; ValueError for a version the parser does not
    understand (builds between releases go through ascend_build first)."""
    return _key_in(version_key(version), spec)


def _key_in(current: tuple[tuple[int, ...], int, int], spec: str) -> bool:
    for op, bound_text in parse_range(spec):
        bound = version_key(bound_text)
        ok = {">=": current >= bound, "<=": current <= bound, "==": current == bound, "!=": current != bound,
              ">": current > bound, "<": current < bound}[op]
        if not ok:
            return False
    return True


def _fact(raw: dict[str, Any], where: str) -> Fact:
    fid = str(raw.get("id") or "")
    if not ID.match(fid):
        raise ValueError(f"{where}: fact id {fid!r} is not kebab-case")
    statement = str(raw.get("statement") or "").strip()
    if not statement or "\n" in statement:
        raise ValueError(f"{where}: fact {fid}: statement must be one non-empty line")
    holds = raw.get("holds")
    if holds == MAIN_ONLY:
        package, spec = None, MAIN_ONLY
    elif isinstance(holds, dict) and set(holds) == {"package", "range"}:
        package, spec = str(holds["package"]), str(holds["range"])
        if package not in PACKAGES:
            raise ValueError(f"{where}: fact {fid}: unknown package {package!r} (one of {', '.join(PACKAGES)})")
        try:
            parse_range(spec)
        except ValueError as exc:
            raise ValueError(f"{where}: fact {fid}: {exc}") from exc
    else:
        raise ValueError(f"{where}: fact {fid}: holds must be {{package, range}} or {MAIN_ONLY!r}")
    sources = raw.get("source")
    if not isinstance(sources, list) or not sources:
        raise ValueError(f"{where}: fact {fid} has no source")
    for src in sources:
        if not isinstance(src, str) or not SOURCE_FORMS.match(src):
            raise ValueError(f"{where}: fact {fid}: source {src!r} is in no known form "
                             "(path@ref[:line], PR #N, issue #N, commit <sha>, doc: ...)")
    if not isinstance(raw.get("verified"), bool):
        raise ValueError(f"{where}: fact {fid}: verified must be true or false")
    values = raw.get("values") or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: fact {fid}: values must be a list of strings")
    return Fact(fid, statement, package, spec, tuple(sources), raw["verified"], str(raw.get("note") or ""),
                tuple(values), _marker(raw.get("marker"), f"{where}: fact {fid}"))


def _marker(raw: Any, where: str) -> tuple[tuple[str, bool], ...]:
    """`marker: {contains: TEXT}` (holds when the source has it), `{lacks: TEXT}`, or both."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw or set(raw) - {"contains", "lacks"} \
            or not all(str(text or "").strip() for text in raw.values()):
        raise ValueError(f"{where}: marker must be {{contains: TEXT}}, {{lacks: TEXT}} or both")
    return tuple((str(text), kind == "contains") for kind, text in raw.items())


def parse(data: dict[str, Any], where: str = "facts") -> dict[str, Fact]:
    facts: dict[str, Fact] = {}
    for raw in data.get("facts") or []:
        fact = _fact(raw or {}, where)
        if fact.id in facts:
            raise ValueError(f"{where}: fact id {fact.id} appears twice")
        facts[fact.id] = fact
    return facts


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> dict[str, Fact]:
    with open(path, encoding="utf-8") as fh:
        return parse(load_yaml(fh) or {}, path)


def load(path: str | Path | None = None) -> dict[str, Fact]:
    """All facts by id (cached until the file changes); ValueError on a malformed table."""
    target = Path(path) if path else FACTS_PATH
    return _load_cached(str(target), target.stat().st_mtime)


def get(fact_id: str, path: str | Path | None = None) -> Fact:
    facts = load(path)
    if fact_id not in facts:
        raise KeyError(f"no fact {fact_id!r} in {path or FACTS_PATH.name}")
    return facts[fact_id]
