"""Is a feature proven by its own run? What a gate's run must show (its evidence keys, the keys
that show an option only accepted, contradicting keys, refusal signatures: data in gates.yaml,
features.yaml and signatures.yaml), checked on a finished run's log: a passing server without that
evidence is a FAIL of the feature (feature-not-active), one only accepted is ACCEPTED, never PASS.
Shared by the gates, the ladder's rungs that are gates, and the feature-first Stage B."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import features as feature_rules
from helpers.catalog import load_catalog
from helpers.features import GateSpec

ACCEPTED = "ACCEPTED"


@dataclass
class Proof:
    """What a gate's run must show: evidence keys, keys that show the option was only accepted,
    contradicting keys and refusal signatures, from the gate and its feature rule (the regexes
    themselves live in signatures.yaml)."""

    name: str
    evidence: list[str]
    accepted_by: list[str]
    contradicted_by: list[str]
    failures: list[str]
    metrics: str | None
    env_evidence: str

    @classmethod
    def of(cls, spec: GateSpec) -> "Proof":
        rule = feature_rules.load_rules().get(spec.feature) if spec.feature else None
        return cls(name=spec.name, evidence=rule.evidence if rule else spec.evidence,
                   accepted_by=rule.accepted_by if rule else [], contradicted_by=spec.contradicted_by,
                   failures=rule.failures if rule else [], metrics=rule.metrics if rule else None,
                   env_evidence=spec.env_evidence)


def find_in_log(log: Path, patterns: list[re.Pattern]) -> tuple[str, int] | None:
    """The first serve.log line matching any pattern: (line, line number)."""
    if not patterns or not log.is_file():
        return None
    with log.open("r", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if any(p.search(line) for p in patterns):
                return line.rstrip("\n"), number
    return None


def _patterns(keys: list[str]) -> list[re.Pattern]:
    catalog = load_catalog()
    return [p for key in keys for p in catalog.evidence_patterns(key)]


def _first(keys: list[str], scan_evidence: dict[str, Any], scan_lines: dict[str, int], log: Path,
           level: str) -> dict[str, Any] | None:
    """The first of these evidence keys the scanner kept, else the first matching serve.log line."""
    for key in keys:
        value = scan_evidence.get(key)
        if value:
            return {"key": key, "line": str(value), "line_no": scan_lines.get(key), "level": level}
    hit = find_in_log(log, _patterns(keys))
    return {"key": None, "line": hit[0], "line_no": hit[1], "level": level} if hit else None


def feature_evidence(spec: GateSpec, scan_evidence: dict[str, Any], scan_lines: dict[str, int], log: Path,
                     server_env: dict[str, str], switch_env: dict[str, str] | None = None
                     ) -> tuple[dict[str, Any] | None, str]:
    """(feature_evidence, why-not). Evidence found -> ({line, line_no, level, ...}, ''), else (None,
    reason). level `took-effect`: a line proves the feature ran; `accepted`: only that the server
    took the option (an accepted-line, or the feature's own env switch in the server's env)."""
    proof = Proof.of(spec)
    contradiction = find_in_log(log, _patterns(proof.contradicted_by))
    if contradiction:
        return None, (f"the option did not take effect: serve.log line {contradiction[1]}: "
                      f"{contradiction[0].strip()[:200]}")
    found = _first(proof.evidence, scan_evidence, scan_lines, log, "took-effect")
    if found:
        return found, ""
    if proof.env_evidence and server_env.get(proof.env_evidence):
        value = server_env[proof.env_evidence]
        return {"key": None, "env": {proof.env_evidence: value}, "level": "took-effect",
                "line": f"{proof.env_evidence}={value} in the server environment (command.sh); no Dynamo trace "
                        f"or compile line in serve.log", "line_no": None}, ""
    accepted = _first(proof.accepted_by, scan_evidence, scan_lines, log, "accepted")
    switched = {k: v for k, v in (switch_env or {}).items() if server_env.get(k) == v}
    if accepted is None and switch_env and switched == switch_env:
        accepted = {"key": None, "env": switched, "level": "accepted", "line_no": None,
                    "line": " ".join(f"{k}={v}" for k, v in switched.items())
                    + " in the server environment (command.sh) and the server started with it"}
    if accepted:
        return accepted, ""
    return None, f"no evidence in serve.log that {spec.name} took effect (looked for: {', '.join(proof.evidence)})"


def apply_feature_check(spec: GateSpec, record: dict[str, Any], log: Path) -> None:
    """Turn a PASSing server without the feature's evidence into a FAIL of the feature (an option
    only accepted stays PASS and says so), and name a failing server's gate failure line (e.g.
    flashcomm1's tp_size / EP requirement)."""
    proof = Proof.of(spec)
    env = (record.get("command") or {}).get("env") or {}
    if record.get("verdict") == "PASS":
        switch = (record.get("variant") or {}).get("env") or {}
        found, why = feature_evidence(spec, record.get("log_evidence") or {},
                                      (record.get("log_scan") or {}).get("evidence_lines") or {}, log, env, switch)
        record["feature_evidence"] = found
        if found is None:
            record["verdict"], record["category"] = "FAIL", "feature-not-active"
            record["reason"] = (f"the server passed its smoke requests, but {spec.name} is not proven: {why}")
        elif found["level"] == "accepted":
            # the option was taken, its effect is not in the log: its own state, never PASS
            record["verdict"], record["category"] = ACCEPTED, "accepted-no-evidence"
            record["reason"] = (f"{spec.name} accepted, no runtime evidence: {found['line'].strip()[:200]} "
                                "(this vllm-ascend logs no line when it takes effect for this model)")
        if proof.metrics:
            record["feature_metrics"] = (record.get("log_evidence") or {}).get(proof.metrics)
    elif record.get("verdict") == "FAIL":
        record["feature_evidence"] = None
        catalog = load_catalog()
        named = find_in_log(log, [catalog.by_id(sig).pattern for sig in proof.failures])
        if named:
            record["gate_failure"] = {"line": named[0], "line_no": named[1]}
            record["reason"] = f"{record.get('reason')}; {spec.name} gate failure (serve.log line {named[1]}): " \
                               f"{named[0].strip()[:200]}"


# --- running ----------------------------------------------------------------------------------
