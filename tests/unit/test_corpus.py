"""The real-log corpus (tests/fixtures/logs/ascend, index corpus.yaml) against the scanner, and the
catalog's regexes against the corpus: every regex has a real line it matches and a real near miss
it must not match. Also the sourced facts table (helpers/ascend_facts.yaml) the catalog points at.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from helpers import ascend_build, ascend_facts, gates
from helpers.catalog import build_catalog
from helpers.catalog import load_catalog
from helpers.diagnosis import diagnose
from helpers.logscan import scan_file
from helpers.verdict import proof

REPO = Path(__file__).resolve().parents[2]
LOGS = REPO / "tests" / "fixtures" / "logs"
ASCEND = LOGS / "ascend"
INDEX = yaml.safe_load((ASCEND / "corpus.yaml").read_text(encoding="utf-8"))["files"]
CASES = [e for e in INDEX if e.get("kind") != "strings"]
CATALOG = load_catalog()
# Real lines the catalog's examples and near misses must come from.
CORPUS_FILES = sorted(ASCEND.rglob("*.log")) + sorted((LOGS / "cpu").glob("*.log")) + [
    REPO / "tests" / "fixtures" / "capacity" / "kv-too-small.log"]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _corpus_lines() -> list[str]:
    lines: list[str] = []
    for path in CORPUS_FILES:
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            lines.extend(ANSI.sub("", seg) for seg in raw.split("\r") if seg and not seg.startswith("# "))
    return lines


CORPUS_LINES = _corpus_lines()


# --- the corpus files themselves -------------------------------------------------------------
def test_every_corpus_file_cites_its_source_and_is_indexed():
    on_disk = {p.relative_to(ASCEND).as_posix() for p in ASCEND.rglob("*.log")}
    indexed = {e["file"] for e in INDEX}
    assert on_disk == indexed, f"not indexed: {on_disk - indexed}; missing: {indexed - on_disk}"
    for name in on_disk:
        first = (ASCEND / name).read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# source: "), name
        assert re.search(r"#\d+|@(?:v\d|main|vllm-|torch-)|HCCL|vllm-", first), f"{name}: no issue, tag or document named"


def test_the_corpus_spans_the_eras_issue_12_asks_for():
    eras = {e["file"].split("/")[0] for e in INDEX}
    assert {"v0.11", "v0.13", "v0.2x", "main"} <= eras


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_corpus_file_diagnosis(case):
    path = ASCEND / case["file"]
    diag = diagnose(path)
    assert diag.verdict == case["verdict"]
    assert sorted(diag.evidence) == sorted(case.get("evidence", []))
    if case["verdict"] != "FAIL":
        assert diag.root_cause_line is None and diag.failures == []
        return
    got = {"category": diag.category, "sig_id": diag.sig_id, "rung": diag.rung or "none",
           "root_line": diag.root_cause_line, "when": diag.when, "false_ready": diag.false_ready}
    assert got == {k: case[k] for k in got}
    line = path.read_text(encoding="utf-8").splitlines()[diag.root_cause_line - 1]
    assert case["root_text"] in line
    assert diag.hint_zh and diag.hint_en


# --- every regex: a real line it matches, a real near miss it must not --------------------------
def _lines_with(text: str) -> list[str]:
    return [line for line in CORPUS_LINES if text in line]


REGEXES = ([(f"signature {s.id}", s.pattern, s.example, s.near_miss) for s in CATALOG.signatures]
           + [(f"evidence {e.key} /{e.pattern.pattern[:30]}/", e.pattern, e.example, e.near_miss)
              for e in CATALOG.extractors])


@pytest.mark.parametrize("name,pattern,example,near_miss", REGEXES, ids=[r[0] for r in REGEXES])
def test_every_regex_has_a_real_match_and_a_real_near_miss(name, pattern, example, near_miss):
    assert example and near_miss, f"{name}: needs an example and a near_miss from the corpus"
    matching = _lines_with(example)
    assert matching, f"{name}: example is not a corpus line: {example!r}"
    assert any(pattern.search(line) for line in matching), f"{name}: does not match its corpus line"
    misses = _lines_with(near_miss)
    assert misses, f"{name}: near_miss is not a corpus line: {near_miss!r}"
    assert any(not pattern.search(line) for line in misses), f"{name}: matches its near miss"


def test_signature_examples_name_the_corpus_file_they_come_from():
    for sig in CATALOG.signatures:
        path = REPO / "tests" / "fixtures" / sig.example_source
        assert path.is_file(), f"{sig.id}: example_source {sig.example_source} does not exist"
        assert sig.example in path.read_text(encoding="utf-8"), f"{sig.id}: example not in {sig.example_source}"


# --- behaviour a user notices ------------------------------------------------------------------
def test_ep_gate_cannot_pass_on_a_log_that_only_has_ep_rank_0(tmp_path):
    log = ASCEND / "v0.13" / "dense-ep-rank-0.log"
    assert "EP rank 0" in log.read_text(encoding="utf-8")
    scanner = scan_file(log)
    found, why = proof.feature_evidence(gates.load_specs()["ep"], scanner.evidence, scanner.evidence_lines, log, {})
    assert found is None and "expert_parallel" in why
    real = scan_file(ASCEND / "v0.13" / "moe-ep-hccl-ei0006.log")
    found, _ = proof.feature_evidence(gates.load_specs()["ep"], real.evidence, real.evidence_lines, log, {})
    assert found is not None and "Expert parallelism is enabled" in found["line"]


def test_flashcomm1_accepted_and_runtime_lines_are_separate_evidence():
    ev = scan_file(ASCEND / "source" / "vllm-ascend-strings.log").evidence
    assert ev["flashcomm1_accepted"].endswith("with value True.")
    assert ev["flashcomm1_runtime"].endswith("replicated for best performance.")
    assert ev["flashcomm1_env_fallback"] == "False"


def test_nested_process_tags_name_the_innermost_worker():
    scanner = scan_file(ASCEND / "v0.2x" / "stream-exhaustion-nested-207005.log")
    assert {h.proc for h in scanner.failures()} == {"Worker_TP3"}
    scanner = scan_file(ASCEND / "v0.2x" / "graph-replay-107030-nested.log")
    assert scanner.root_cause().proc == "Worker_DP0_TP5_EP5"


def test_capture_and_replay_failures_are_told_apart():
    capture = diagnose(ASCEND / "v0.2x" / "stream-exhaustion-nested-207005.log")
    assert capture.when == "capture" and capture.category == "stream-exhaustion"


def test_107030_is_placed_by_the_phase_it_happened_in_not_by_its_text(tmp_path):
    """The same 107027/107030 text is a startup-capture failure on 310P + MTP (PR #10309) and a
    replay failure on A2/A3 (#11912): the log around it decides, and only the capture case is
    told that lowering the length does not help. The replay log is assembled in tmp_path from two
    corpus files (ready lines of healthy-ready-replay.log, then the #11912 plog)."""
    at_capture = diagnose(ASCEND / "v0.2x" / "graph-replay-107027-310p.log")
    ready = (ASCEND / "v0.2x" / "healthy-ready-replay.log").read_text(encoding="utf-8").splitlines()[1:7]
    plog = (ASCEND / "v0.2x" / "graph-replay-107030-plog.log").read_text(encoding="utf-8").splitlines()[1:]
    served = tmp_path / "serve.log"
    served.write_text("\n".join(ready + plog) + "\n", encoding="utf-8")
    at_replay = diagnose(served)
    assert (at_capture.when, at_replay.when) == ("capture", "replay")
    assert at_capture.sig_id == at_replay.sig_id == "graph-replay-capture-mode" and at_capture.rung == "eager"
    assert "not memory" in at_capture.hint_en and "310P" in at_capture.hint_en


def test_a_bare_507903_capture_end_line_reaches_the_capture_invalidated_rung():
    diag = diagnose(ASCEND / "v0.2x" / "capture-end-507903-bare.log")
    assert (diag.sig_id, diag.rung, diag.category) == ("graph-capture-invalidated", "eager", "graph-capture")


def test_version_bound_diagnosis_names_its_fact():
    diag = diagnose(ASCEND / "v0.13" / "flashcomm1-tp1.log")
    assert diag.fact and diag.fact in ascend_facts.load()


# --- the facts table and the catalog's links to it ------------------------------------------------
def test_every_fact_has_a_source_and_a_valid_range():
    facts = ascend_facts.load()
    assert len(facts) >= 40
    for fact in facts.values():
        assert fact.source and all(ascend_facts.SOURCE_FORMS.match(s) for s in fact.source), fact.id
        if not fact.main_only:
            ascend_facts.parse_range(fact.range)
    # and every version a replay box reports is one the rules can read (a source build's
    # `.devN+g<sha>` or `0.0.0` included): an unparseable one would crash or silently skip a rule
    for path in sorted((REPO / "helpers" / "replay" / "scenarios").glob("*.yaml")):
        versions = (yaml.safe_load(path.read_text(encoding="utf-8")).get("box") or {}).get("versions") or {}
        for package in ("vllm", "vllm-ascend", "torch-npu"):
            if package in versions:
                ascend_build.parse(str(versions[package]))


def test_a_version_the_rules_cannot_read_fails_the_fact_check():
    with pytest.raises(ValueError, match="is not understood"):
        ascend_facts.get("fp8-accepted").holds_for("0.26.0rc1.dev+g182b75ea84")
    with pytest.raises(ValueError, match="not `<op><version>`"):
        ascend_facts.parse_range(">=0.26.0rc1.dev")


@pytest.mark.parametrize("holds,source,message", [
    ({"package": "vllm-ascend", "range": ">=0.20.2rc1,<0.27"}, [], "has no source"),
    ({"package": "vllm-ascend", "range": "from 0.20 on"}, ["PR #9064"], "not `<op><version>`"),
    ({"package": "vllm-ascend", "range": ">=0.20"}, ["somewhere in the repo"], "in no known form"),
    ({"package": "vllm-asend", "range": ">=0.20"}, ["PR #9064"], "unknown package"),
    ("on main", ["PR #13946"], "holds must be"),
])
def test_malformed_facts_are_refused(holds, source, message):
    with pytest.raises(ValueError, match=message):
        ascend_facts.parse({"facts": [{"id": "x-fact", "statement": "s", "holds": holds, "source": source,
                                       "verified": True}]})


def test_flashcomm1_switch_facts_follow_the_upstream_boundaries():
    facts = ascend_facts.load()
    env, config = facts["flashcomm1-switch-env"], facts["flashcomm1-switch-additional-config"]
    assert env.holds_for("0.19.1rc1") and not config.holds_for("0.19.1rc1")
    assert config.holds_for("0.20.2rc1") and not env.holds_for("0.20.2rc1")
    assert not env.holds_for("0.11.0rc0") and facts["flashcomm1-switch-env-flashcomm"].holds_for("0.11.0rc0")
    assert config.holds_for("0.26.0rc2") and not config.holds_for("0.27.0")
    assert facts["flashcomm1-removed-main"].holds_for(None, main=True)


def _catalog_with(sig_extra: dict) -> dict:
    sig = {"id": "x", "regex": "x", "category": "c", "severity": "failure", "stage": "any", "hint_zh": "中",
           "hint_en": "e", "rung": "none", "example": "x", **sig_extra}
    return {"signatures": [sig], "rungs": {"none": {}}}


def test_version_dependent_signature_without_a_fact_is_refused():
    facts = ascend_facts.load()
    with pytest.raises(ValueError, match="version-dependent but names no fact"):
        build_catalog(_catalog_with({"version_dependent": True}), "t", facts)
    with pytest.raises(ValueError, match="not in helpers/ascend_facts.yaml"):
        build_catalog(_catalog_with({"fact": "no-such-fact"}), "t", facts)
    assert build_catalog(_catalog_with({"version_dependent": True, "fact": "capture-invalidated"}), "t", facts)


def test_catalog_entries_point_at_facts_for_version_bound_texts():
    facts = ascend_facts.load()
    bound = {s.id: s.fact for s in CATALOG.signatures if s.fact}
    assert {"flashcomm-needs-tp", "flashcomm-deprecated", "stream-exhaustion-wrapped", "mtp-method-deprecated",
            "quantization-not-supported-npu", "soc-mismatch"} <= set(bound)
    assert all(f in facts for f in bound.values())
    assert {e.key for e in CATALOG.extractors if e.fact} >= {"graph_replay", "expert_parallel", "ep_worker", "flashcomm1_runtime",
                                                           "flashcomm1_accepted", "torch_compile"}
