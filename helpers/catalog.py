"""The signature catalog (helpers/signatures.yaml): loading, validation, compiled patterns.

Kept apart from the scanner (helpers/logscan.py) so the scanner stays small; logscan re-exports
load_catalog and CATALOG_PATH for the callers that import them from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable


from helpers import load_yaml
from helpers import ascend_facts
from helpers.verdict.nextstep import double_quoted, merge_args, quote_word, split_words

CATALOG_PATH = Path(__file__).with_name("signatures.yaml")
SEVERITIES = ("info", "evidence", "failure")
STAGES = ("startup", "runtime", "any")
# How much a line says about the cause. 0: a wrapper that only says "it died" (WorkerProc hit an
# exception, ERR00100 PTA call acl api failed); 1: a family-level error without its cause (OPS
# function error: HcclAllreduce, error code is 6); 2: a specific cause (an error code or CANN error
# id with its meaning, a known exception text). The root cause is the most specific line of the
# first incident; a traceback's exception line without a signature counts as 1.
SPECIFICITY = (0, 1, 2)
GENERIC_SPECIFICITY = 0
DEFAULT_SPECIFICITY = 2


@dataclass(frozen=True)
class Signature:
    id: str
    regex: str
    pattern: re.Pattern
    category: str
    severity: str
    stage: str
    hint_zh: str
    hint_en: str
    rung: str | None
    example: str
    generic: bool
    needles: tuple[str, ...] | None  # one of these must be in the line for the regex to match
    specificity: int = DEFAULT_SPECIFICITY
    fact: str | None = None           # helpers/ascend_facts.yaml id when the text is version-bound
    example_source: str = ""
    near_miss: str = ""


@dataclass(frozen=True)
class Extractor:
    key: str
    kind: str  # int | float | str | line | dict | list
    pattern: re.Pattern
    needles: tuple[str, ...] | None
    keep: str = "first"
    vllm_prefix_only: bool = False
    fact: str | None = None
    example: str = ""
    near_miss: str = ""


@dataclass(frozen=True)
class Catalog:
    signatures: tuple[Signature, ...]
    phases: tuple[tuple[str, re.Pattern], ...]
    stop_markers: tuple[re.Pattern, ...]
    ignore_lines: tuple[re.Pattern, ...]
    extractors: tuple[Extractor, ...]
    runtime_gates: tuple[bytes, ...]
    rungs: dict[str, dict[str, str]]
    # Graph-mode fault categories by when they can happen: capture (startup), replay (after the
    # first request), either; the diagnosis reports which one a failure was.
    graph_categories: dict[str, frozenset[str]] = field(default_factory=dict)
    # notes added to a hint in a given situation: {name: {zh, en}}
    notes: dict[str, dict[str, str]] = field(default_factory=dict)

    def by_id(self, sig_id: str) -> Signature:
        for sig in self.signatures:
            if sig.id == sig_id:
                return sig
        raise KeyError(sig_id)

    def evidence_patterns(self, key: str) -> list[re.Pattern]:
        """The regexes of an evidence key (a key may have several extractors)."""
        found = [ex.pattern for ex in self.extractors if ex.key == key]
        if not found:
            raise KeyError(key)
        return found


def _literal_runs(items: Iterable) -> tuple[str, ...] | None:
    """Required literal text of a parsed regex sequence: the longest literal run, or one literal
    per alternative of a top-level branch. None when nothing is surely required."""
    from re import _parser as sre  # noqa: PLC0415 (private, but stable in 3.11 and 3.12)

    best = ""
    run: list[str] = []
    branch_needles: tuple[str, ...] | None = None
    for op, av in list(items) + [(None, None)]:
        if op is sre.LITERAL:
            run.append(chr(av))
            continue
        if len("".join(run)) > len(best):
            best = "".join(run)
        run = []
        if op is sre.SUBPATTERN and av[1] == 0 and av[2] == 0:
            inner = _literal_runs(av[3])
            if inner and (branch_needles is None or min(map(len, inner)) > min(map(len, branch_needles))):
                branch_needles = inner
        elif op is sre.BRANCH:
            alternatives = [_literal_runs(alt) for alt in av[1]]
            if all(alternatives):
                needles = tuple(n for alt in alternatives for n in alt)  # type: ignore[union-attr]
                if branch_needles is None or min(map(len, needles)) > min(map(len, branch_needles)):
                    branch_needles = needles
    if len(best) >= 3:
        return (best,)
    if branch_needles and min(map(len, branch_needles)) >= 2:
        return branch_needles
    return (best,) if best else None


def required_literals(regex: str) -> tuple[str, ...] | None:
    """Substrings one of which every match of `regex` contains (a cheap pre-filter)."""
    try:
        from re import _parser as sre  # noqa: PLC0415

        parsed = sre.parse(regex)
    except Exception:  # any other Python: no pre-filter, the regex still decides
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None
    return _literal_runs(parsed)


def _compile(where: str, regex: str) -> re.Pattern:
    try:
        return re.compile(regex)
    except re.error as exc:
        raise ValueError(f"{where}: bad regex {regex!r}: {exc}") from exc


def _check_fact(where: str, owner: str, raw: dict[str, Any], facts: dict[str, Any] | None) -> str | None:
    """A version-bound entry must name an existing fact (helpers/ascend_facts.yaml)."""
    fact = raw.get("fact")
    if raw.get("version_dependent") and not fact:
        raise ValueError(f"{where}: {owner} is version-dependent but names no fact")
    if fact and facts is not None and fact not in facts:
        raise ValueError(f"{where}: {owner}: fact {fact!r} is not in helpers/ascend_facts.yaml")
    return str(fact) if fact else None


def _signature(raw: dict[str, Any], where: str, rungs: dict[str, Any], facts: dict[str, Any] | None) -> Signature:
    sig_id = str(raw.get("id", ""))
    missing = [k for k in ("id", "regex", "category", "severity", "stage", "hint_zh", "hint_en", "rung",
                           "example") if not raw.get(k)]
    if missing:
        raise ValueError(f"{where}: signature {sig_id or '?'} lacks {', '.join(missing)}")
    if raw["severity"] not in SEVERITIES or raw["stage"] not in STAGES:
        raise ValueError(f"{where}: signature {sig_id}: severity {raw['severity']!r} / stage {raw['stage']!r}")
    if rungs and raw["rung"] not in rungs:
        raise ValueError(f"{where}: signature {sig_id}: unknown rung {raw['rung']!r}")
    generic = bool(raw.get("generic", False))
    specificity = raw.get("specificity", GENERIC_SPECIFICITY if generic else DEFAULT_SPECIFICITY)
    if specificity not in SPECIFICITY:
        raise ValueError(f"{where}: signature {sig_id}: specificity {specificity!r} not in {SPECIFICITY}")
    return Signature(
        id=sig_id, regex=raw["regex"], pattern=_compile(sig_id, raw["regex"]), category=raw["category"],
        severity=raw["severity"], stage=raw["stage"], hint_zh=raw["hint_zh"], hint_en=raw["hint_en"],
        rung=None if raw["rung"] == "none" else raw["rung"], example=raw["example"], generic=generic,
        needles=required_literals(raw["regex"]), specificity=int(specificity),
        fact=_check_fact(where, f"signature {sig_id}", raw, facts),
        example_source=str(raw.get("example_source") or ""), near_miss=str(raw.get("near_miss") or ""),
    )


def _extractor(raw: dict[str, Any], where: str, facts: dict[str, Any] | None) -> Extractor:
    kind = raw.get("kind", "line")
    if kind not in ("int", "float", "str", "line", "dict", "list"):
        raise ValueError(f"{where}: evidence {raw.get('key')}: unknown kind {kind!r}")
    pattern = _compile(f"evidence {raw['key']}", raw["regex"])
    if kind not in ("line", "list") and "v" not in pattern.groupindex:
        raise ValueError(f"{where}: evidence {raw['key']}: kind {kind} needs a (?P<v>...) group")
    return Extractor(key=raw["key"], kind=kind, pattern=pattern, needles=required_literals(raw["regex"]),
                     keep=raw.get("keep", "first"), vllm_prefix_only=bool(raw.get("vllm_prefix_only")),
                     fact=_check_fact(where, f"evidence {raw['key']}", raw, facts),
                     example=str(raw.get("example") or ""), near_miss=str(raw.get("near_miss") or ""))


def build_catalog(data: dict[str, Any], where: str, facts: dict[str, Any] | None = None) -> Catalog:
    """Validate and compile a parsed catalog. `facts` (id -> fact) checks the `fact:` keys."""
    rungs = {str(k): dict(v or {}) for k, v in (data.get("rungs") or {}).items()}
    signatures = []
    seen: set[str] = set()
    for raw in data.get("signatures") or []:
        sig = _signature(raw, where, rungs, facts)
        if sig.id in seen:
            raise ValueError(f"{where}: signature id {sig.id} appears twice")
        seen.add(sig.id)
        signatures.append(sig)
    phases = tuple((str(p["label"]), _compile(f"phase {p['label']}", p["regex"])) for p in data.get("phases") or [])
    stops = tuple(_compile("stop marker", r) for r in data.get("stop_markers") or [])
    ignored = tuple(_compile("ignore line", r) for r in data.get("ignore_lines") or [])
    extractors = tuple(_extractor(raw, where, facts) for raw in data.get("evidence") or [])
    gates = tuple(str(g).encode() for g in data.get("runtime_gates") or [])
    graph_raw = data.get("graph_categories") or {}
    if not isinstance(graph_raw, dict) or not set(graph_raw) <= {"capture", "replay", "either"}:
        raise ValueError(f"{where}: graph_categories must map capture / replay / either to category lists")
    graph = {str(k): frozenset(str(c) for c in v or []) for k, v in graph_raw.items()}
    notes = {str(k): {"zh": str(v["zh"]), "en": str(v["en"])} for k, v in (data.get("notes") or {}).items()}
    return Catalog(tuple(signatures), phases, stops, ignored, extractors, gates, rungs, graph, notes)




def fill_rung(entry: dict[str, Any], values: dict[str, Any], extra_args: str = "",
              context_parallel: int = 1) -> dict[str, str]:
    """A rung's command, why / why_zh (and hint override) with {model} {port} {step} {max_model_len} filled;
    {extra_args} is the run's own EXTRA_ARGS plus the rung's `extra_args`, quoted as one word.
    A context-parallel run (pcp x dcp > 1) takes the rung's `context_parallel` variant."""
    if context_parallel > 1 and entry.get("context_parallel"):
        entry = {**entry, **entry["context_parallel"]}
    # each flag once: the run's own EXTRA_ARGS merged with the rung's (JSON options key by key)
    extra = " ".join(quote_word(w) for w in merge_args(split_words(extra_args), split_words(str(entry.get("extra_args") or ""))))
    filled = {**{k: str(v) for k, v in values.items()}, "extra_args": double_quoted(extra)}

    def fill(text: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: filled.get(m.group(1), m.group(0)), text)

    return {key: fill(str(entry.get(key) or "")) for key in ("command", "why", "why_zh", "hint_zh", "hint_en")}


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Catalog:
    with open(path, encoding="utf-8") as fh:
        data = load_yaml(fh) or {}
    return build_catalog(data, path, ascend_facts.load())


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load (once; cached until the file changes) and compile the signature catalog."""
    target = Path(path) if path else CATALOG_PATH
    return _load_cached(str(target), target.stat().st_mtime)
