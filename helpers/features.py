"""The switch rules as data: features (helpers/features.yaml), the gates that run them
(helpers/gates.yaml) and the fallback ladder's rungs (helpers/ladder.yaml), and the evaluation
of the feature rules against triage facts.

This module reads the rules and decides, for one model on one box, which of the workflow's four
categories each feature falls in, with the evidence for the decision and the flags/env that turn
the feature on for the installed version. Triage, the gates and the ladder all read the rules
here, so they never disagree. Every YAML key maps onto a dataclass field: an unknown key is
refused when the file is read.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from string import Template
from typing import Any, Callable

import yaml

from helpers import load_yaml
from helpers import ascend_facts
from helpers.errors import UsageError
from helpers.plan import Variant
from helpers.catalog import load_catalog

RULES_PATH = Path(__file__).resolve().parent / "features.yaml"
GATES_PATH = Path(__file__).resolve().parent / "gates.yaml"
LADDER_PATH = Path(__file__).resolve().parent / "ladder.yaml"

SUPPORTED = "supported"
FRAMEWORK_UNSUPPORTED = "framework-unsupported"
CHECKPOINT_MISSING = "checkpoint-missing"
NOT_APPLICABLE = "not-applicable"
CATEGORIES = (SUPPORTED, FRAMEWORK_UNSUPPORTED, CHECKPOINT_MISSING, NOT_APPLICABLE)

# Answers "does the installed <package> source contain <text>?"; None when the source is not found.
SourceProbe = Callable[[str, str], "bool | None"]


@dataclass
class VersionRule:
    mode: str
    package: str
    fact: str                 # helpers/ascend_facts.yaml: the sourced fact whose versions this holds for
    source_contains: str = ""
    category: str = ""
    because: str = ""
    flags: list[str] | None = None
    env: dict[str, str] | None = None
    # a triage fact whose value must be in the fact's `values` (e.g. the architectures a graph
    # mode covers in that version), else framework-unsupported
    covers: str = ""


@dataclass
class FeatureRule:
    id: str
    name: str
    zh: str = ""
    make_target: str | None = None
    applies_when: dict[str, Any] = field(default_factory=dict)
    not_applicable_because: str = ""
    checkpoint_requires: dict[str, Any] = field(default_factory=dict)
    checkpoint_missing_because: str = ""
    requires: dict[str, list[str]] = field(default_factory=dict)
    framework_unsupported_because: str = ""
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)   # evidence keys of helpers/signatures.yaml
    # evidence keys that show the option was accepted, not that it took effect; with only these
    # (or the feature's own env switch in the server's environment) the gate says so, not FAIL
    accepted_by: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)   # signature ids of the feature's refusals
    metrics: str | None = None                          # evidence key recorded as feature_metrics
    versions: list[VersionRule] = field(default_factory=list)


@dataclass
class FeatureAssessment:
    id: str
    name: str
    zh: str
    category: str
    verdict: str | None  # None = to be decided by a run
    evidence: str
    flags: list[str]
    env: dict[str, str]
    log_evidence: list[str]
    make_target: str | None
    version_mode: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RuleSet:
    categories: dict[str, dict[str, Any]]
    features: list[FeatureRule]

    def get(self, feature_id: str) -> FeatureRule:
        for rule in self.features:
            if rule.id == feature_id:
                return rule
        raise UsageError(f"feature {feature_id!r} is not in {RULES_PATH.name}",
                         f"use one of: {', '.join(r.id for r in self.features)}")

    def verdict(self, category: str) -> str | None:
        return self.categories.get(category, {}).get("verdict")

    def label(self, category: str, lang: str = "zh") -> str:
        return str(self.categories.get(category, {}).get(lang, category))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        return load_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read rules {path}: {exc}".splitlines()[0]) from None


def _build(cls: type, entry: dict[str, Any], where: str) -> Any:
    """A dataclass from a YAML mapping; a key no code reads is refused, not ignored."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {unknown}", f"use only {sorted(known)}")
    return cls(**entry)


def load_rules(path: Path | None = None) -> RuleSet:
    path = path or RULES_PATH
    data = _read_yaml(path)
    features = []
    for entry in data.get("features") or []:
        entry = dict(entry)
        where = f"{path.name} feature {entry.get('id')}"
        versions = [_build(VersionRule, v, where) for v in entry.pop("versions", None) or []]
        features.append(_build(FeatureRule, {**entry, "versions": versions}, where))
    categories = data.get("categories") or {}
    missing = [c for c in CATEGORIES if c not in categories]
    if missing:
        raise UsageError(f"{path.name} lacks the categories {missing}")
    return RuleSet(categories=categories, features=features)


# --- conditions -----------------------------------------------------------------------------

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "ge": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "le": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
}


def condition_holds(condition: dict[str, Any], facts: dict[str, Any]) -> bool:
    """Every `fact: expected` pair must hold; expected is a value or `{operator: value}`."""
    for fact, expected in (condition or {}).items():
        actual = facts.get(fact)
        if isinstance(expected, dict):
            for op, value in expected.items():
                if op not in _OPERATORS:
                    raise UsageError(f"unknown operator {op!r} in feature rule for {fact!r}",
                                     f"use one of {sorted(_OPERATORS)}")
                if not _OPERATORS[op](actual, value):
                    return False
        elif actual != expected:
            return False
    return True


def render(text: str, facts: dict[str, Any]) -> str:
    values = {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for k, v in facts.items()}
    return Template(text).safe_substitute(values)


# --- versions -------------------------------------------------------------------------------

def pick_version_rule(rule: FeatureRule, versions: dict[str, str | None],
                      source_probe: SourceProbe | None) -> tuple[VersionRule | None, str]:
    """The first version entry matching the installed package, and why it matched: a source
    marker (text in the installed package) first, else the versions of the entry's fact."""
    for entry in rule.versions:
        fact = ascend_facts.get(entry.fact)
        if entry.source_contains and source_probe is not None:
            found = source_probe(entry.package, entry.source_contains)
            if found is True:
                return entry, f"installed {entry.package} source contains {entry.source_contains!r}; fact {fact.id}"
            if found is False:
                continue
        installed = versions.get(entry.package)
        if installed and fact.decide(installed, source_probe)[0]:
            return entry, f"{entry.package} {installed} is in {fact.range} (fact {fact.id}: {fact.source[0]})"
    return None, ""


# --- assessment -----------------------------------------------------------------------------

def _module_importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def evidence_regexes(keys: list[str]) -> list[str]:
    """What the log must show for these evidence keys (their regexes in signatures.yaml)."""
    catalog = load_catalog()
    # a key left as "$fact" names a fact these facts lack: nothing to show for it
    return [p.pattern for key in keys if key and not key.startswith("$") for p in catalog.evidence_patterns(key)]


def assess(rule: FeatureRule, rules: RuleSet, facts: dict[str, Any], *,
           versions: dict[str, str | None] | None = None,
           source_probe: SourceProbe | None = None,
           module_probe: Callable[[str], bool] = _module_importable) -> FeatureAssessment:
    def result(category: str, evidence: str, *, flags: list[str] | None = None,
               env: dict[str, str] | None = None, mode: str | None = None) -> FeatureAssessment:
        return FeatureAssessment(
            id=rule.id, name=rule.name, zh=rule.zh, category=category, verdict=rules.verdict(category),
            evidence=evidence, flags=[render(f, facts) for f in (rule.flags if flags is None else flags)],
            env={k: render(str(v), facts) for k, v in (rule.env if env is None else env).items()},
            log_evidence=evidence_regexes([key for k in rule.evidence for key in render(k, facts).split(",")]),
            make_target=rule.make_target, version_mode=mode,
        )

    if not condition_holds(rule.applies_when, facts):
        return result(NOT_APPLICABLE, render(rule.not_applicable_because or "rule does not apply", facts))
    if not condition_holds(rule.checkpoint_requires, facts):
        return result(CHECKPOINT_MISSING, render(rule.checkpoint_missing_because or "checkpoint lacks it", facts))
    backends = rule.requires.get("backends") or []
    if backends and facts.get("backend") not in backends:
        return result(FRAMEWORK_UNSUPPORTED, render(rule.framework_unsupported_because
                                                    or f"needs backend {backends}", facts))
    missing_modules = [m for m in rule.requires.get("modules") or [] if not module_probe(m)]
    if missing_modules:
        because = rule.framework_unsupported_because or "needs modules $missing"
        return result(FRAMEWORK_UNSUPPORTED, render(because, {**facts, "missing": ", ".join(missing_modules)})
                      + f" (not importable: {', '.join(missing_modules)})")
    base = "applies: " + ", ".join(f"{k}={facts.get(k)}" for k in (rule.applies_when or {})) \
        if rule.applies_when else "applies to every model"
    if rule.checkpoint_requires:
        base += "; checkpoint: " + ", ".join(f"{k}={facts.get(k)}" for k in rule.checkpoint_requires)
    if rule.versions:
        entry, why = pick_version_rule(rule, versions or {}, source_probe)
        if entry is None:
            installed = (versions or {}).get(rule.versions[0].package)
            return result(FRAMEWORK_UNSUPPORTED,
                          f"{base}; no version rule matches {rule.versions[0].package} {installed or '(not found)'}")
        if entry.category == FRAMEWORK_UNSUPPORTED:
            return result(FRAMEWORK_UNSUPPORTED, f"{render(entry.because, facts)} ({why})", mode=entry.mode)
        covered = ascend_facts.get(entry.fact).values
        if entry.covers and facts.get(entry.covers) not in covered:
            return result(FRAMEWORK_UNSUPPORTED, f"{render(entry.because, facts) or rule.name} does not cover "
                          f"{entry.covers} {facts.get(entry.covers)} (covers {', '.join(covered)}; {why})",
                          mode=entry.mode)
        return result(SUPPORTED, f"{base}; {entry.mode} ({why})", flags=entry.flags, env=entry.env, mode=entry.mode)
    return result(SUPPORTED, base)


def assess_all(facts: dict[str, Any], *, rules: RuleSet | None = None,
               versions: dict[str, str | None] | None = None,
               source_probe: SourceProbe | None = None,
               module_probe: Callable[[str], bool] = _module_importable) -> list[FeatureAssessment]:
    rules = rules or load_rules()
    return [assess(rule, rules, facts, versions=versions, source_probe=source_probe, module_probe=module_probe)
            for rule in rules.features]


# --- gates and ladder rungs -------------------------------------------------------------------

@dataclass
class GateSpec:
    name: str
    feature: str | None = None
    applies_when: dict[str, Any] = field(default_factory=dict)
    because: str = ""
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    extra_flags_when: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    contradicted_by: list[str] = field(default_factory=list)
    env_evidence: str = ""
    skips_requests: list[str] = field(default_factory=list)

    def variant(self, name: str | None = None) -> Variant:
        """An isolation gate's switch as a serve-plan variant."""
        return Variant(name=name or self.name, flags=list(self.flags), env=dict(self.env),
                       skip_requests=list(self.skips_requests))


def load_specs(path: Path | None = None) -> dict[str, GateSpec]:
    path = path or GATES_PATH
    data = _read_yaml(path)
    return {name: _build(GateSpec, {"name": name, **(entry or {})}, f"{path.name} gate {name}")
            for name, entry in (data.get("gates") or {}).items()}


WHEN = ("always", "dynamo-related", "multimodal", "supported", "graph-fault")


@dataclass
class Rung:
    id: str
    why: str = ""
    when: str = "always"
    # the gate whose switch this rung adds (None: the base command): an isolation gate, or with
    # `when: supported` a feature gate, whose switch is what triage assessed for this box
    gate: str | None = None
    variant: Variant = field(default_factory=Variant)
    feature: str | None = None  # set from the gate: the feature rule a `supported` rung asks
    flags: list[str] = field(default_factory=list)  # a rung's own switch when no gate has it
    isolates: str = ""  # an isolation rung: what its PASS isolates (never "fixed by")


@dataclass
class LadderSpec:
    rungs: list[Rung]
    dynamo_related: re.Pattern


def load_ladder(path: Path | None = None, gates: dict[str, GateSpec] | None = None) -> LadderSpec:
    path = path or LADDER_PATH
    data = _read_yaml(path)
    gates = gates or load_specs()
    rungs = []
    for entry in data.get("rungs") or []:
        rung = _build(Rung, dict(entry), f"{path.name} rung {entry.get('id')}")
        if rung.when not in WHEN:
            raise UsageError(f"{path.name}: rung {rung.id} has when={rung.when!r}", f"use one of {WHEN}")
        if rung.gate is not None:
            spec = gates.get(rung.gate)
            if spec is None or (spec.feature is not None) != (rung.when == "supported"):
                raise UsageError(f"{path.name}: rung {rung.id} names {rung.gate!r}: an isolation gate of gates.yaml, "
                                 "or a feature gate with when: supported")
            rung.variant = spec.variant(rung.id)
            rung.feature = spec.feature
        elif rung.flags:
            rung.variant = Variant(name=rung.id, flags=list(rung.flags), env={})
        rungs.append(rung)
    return LadderSpec(rungs=rungs, dynamo_related=re.compile(data.get("dynamo_related") or r"dynamo"))
