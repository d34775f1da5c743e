"""The log scan's prefilters never drop a line its regexes match.

Two prefilters stand before the catalog's regexes (helpers/logscan.py): the required literals of
each signature's and extractor's regex (helpers/catalog.py required_literals), all looked for in
one pass per line (helpers/multifind.py LiteralIndex), and, after `Application startup complete`,
the catalog's runtime gates, searched for all at once (MultiFind). Both use ahocorasick-rs, or
plain `in` / bytes.find without it. Checked on
every line of the real-log corpus (tests/fixtures/logs/**) and on the catalog's own examples and
near misses; the scanner must answer the same with either gate search. No server, no network.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from helpers import multifind
from helpers.catalog import load_catalog
from helpers.logscan import LogScanner
from helpers.multifind import LiteralIndex, MultiFind, multi_find
from test_corpus import CORPUS_FILES, CORPUS_LINES

CATALOG = load_catalog()
ENTRIES = [(s.id, s.pattern, s.needles) for s in CATALOG.signatures] + [
    (f"evidence {x.key}", x.pattern, x.needles) for x in CATALOG.extractors]
OWN_LINES = [s.example for s in CATALOG.signatures] + [s.near_miss for s in CATALOG.signatures if s.near_miss] + [
    x.example for x in CATALOG.extractors if x.example] + [x.near_miss for x in CATALOG.extractors if x.near_miss]
GATES = tuple(g.decode() for g in CATALOG.runtime_gates)


@pytest.mark.parametrize("name,pattern,needles", ENTRIES, ids=[e[0] for e in ENTRIES])
def test_required_literals_never_drop_a_line_the_regex_matches(name, pattern, needles):
    matched = [line for line in CORPUS_LINES + OWN_LINES if pattern.search(line)]
    assert matched, f"{name} matches no corpus line nor its own example"
    if needles is None:
        return  # no prefilter: the regex alone decides
    dropped = [line for line in matched if not any(n in line for n in needles)]
    assert not dropped, f"{name}: prefilter {needles} would drop {dropped[:3]}"


@pytest.mark.parametrize("fast", [True, False], ids=["ahocorasick-rs", "plain"])
def test_the_literal_index_offers_every_regex_that_matches(fast):
    """The scanner runs only the regexes the index names: one it leaves out must not match."""
    index = LiteralIndex(tuple(needles for _, _, needles in ENTRIES), fast=fast)
    assert (index._automaton is not None) == (fast and multifind.ahocorasick_rs is not None)
    plain = LiteralIndex(index.required, fast=False)
    for line in CORPUS_LINES + OWN_LINES + ["", "E", "EngineDeadError EngineDeadError", "Watchdog" * 3]:
        offered = index.candidates(line)
        assert offered == sorted(set(offered)) == plain.candidates(line), line
        matching = [i for i, (_, pattern, _) in enumerate(ENTRIES) if pattern.search(line)]
        assert set(matching) <= set(offered), (line, [ENTRIES[i][0] for i in set(matching) - set(offered)])


def test_most_regexes_have_a_prefilter():
    """A prefilter derived as None for everything would make the test above vacuous."""
    without = [name for name, _, needles in ENTRIES if needles is None]
    assert len(without) <= len(ENTRIES) // 10, f"no required literal found for {without}"


@pytest.mark.parametrize("sig", [s for s in CATALOG.signatures if s.stage != "startup" and s.severity == "failure"],
                         ids=lambda s: s.id)
def test_every_corpus_line_of_a_runtime_failure_passes_a_gate(sig):
    """After ready only lines holding a gate are read: a runtime failure line without one is lost."""
    missed = [line for line in CORPUS_LINES + [sig.example] if sig.pattern.search(line)
              and not any(gate in line for gate in GATES)]
    assert not missed, f"{sig.id}: no runtime gate in {missed[:3]}"


def _lines_with_offsets(data: bytes, offsets: list[int]) -> set[int]:
    return {data.count(b"\n", 0, at) for at in offsets}


def _mixed_text() -> bytes:
    """Corpus logs, serving traffic, and gates at line starts, ends, overlapping and repeated."""
    corpus = b"".join(path.read_bytes() for path in CORPUS_FILES)
    tricky = [b"ERRORrror", b"rror", b"xrrorEI00EJ00", b"507011", b"aclgraphaclgraph torch._dynamo", b"no gate here",
              b"ERRO", b"rro r", b"EL000", b"non-default args", b"\rWatchdog\r", b"signal=SIG" * 3]
    rng = random.Random(22)
    serving = [b'INFO:     127.0.0.1:40000 - "POST /v1/chat/completions HTTP/1.1" 200 OK'] * 200 + tricky * 20
    rng.shuffle(serving)
    return corpus + b"\n".join(serving) + b"\nlast line without newline ERROR"


@pytest.mark.parametrize("fast", [True, False], ids=["ahocorasick-rs", "bytes.find"])
def test_gate_search_finds_exactly_the_lines_holding_a_gate(fast):
    data = _mixed_text()
    finder = MultiFind(CATALOG.runtime_gates, fast=fast)
    lines = data.split(b"\n")
    rng = random.Random(7)
    ranges = [(0, len(data))] + [tuple(sorted(rng.sample(range(len(data)), 2))) for _ in range(20)]
    for start, end in ranges:
        offsets = finder.offsets(data, start, end)
        assert offsets == sorted(offsets) and all(start <= at < end for at in offsets)
        expected = set()
        line_start = 0
        for index, line in enumerate(lines):
            window = data[max(start, line_start):min(end, line_start + len(line))]
            if any(gate in window for gate in CATALOG.runtime_gates):
                expected.add(index)
            line_start += len(line) + 1
        assert _lines_with_offsets(data, offsets) == expected, (start, end)


def test_the_fast_gate_search_is_installed():
    """`make setup` installs ahocorasick-rs; without it a 1 GB log scans at ~150 MB/s, not ~700."""
    assert multifind.ahocorasick_rs is not None
    assert multi_find(CATALOG.runtime_gates).engine == "ahocorasick-rs"


def test_a_literal_with_a_newline_is_refused():
    with pytest.raises(ValueError, match="newline"):
        MultiFind((b"ERROR", b"a\nb"))


def _scan(path: Path, fast: bool, chunk: int) -> dict:
    scanner = LogScanner(CATALOG)
    scanner.gates = MultiFind(CATALOG.runtime_gates, fast=fast)
    scanner.literals = LiteralIndex(scanner.literals.required, fast=fast)
    data = path.read_bytes()
    for at in range(0, len(data), chunk):
        scanner.feed(data[at:at + chunk])
    scanner.finish()
    return scanner.to_dict()


def test_the_scanner_answers_the_same_with_either_search(tmp_path):
    serving = tmp_path / "serving.log"
    text = _mixed_text()
    # the corpus once more behind a ready line: its failures are now read in gated mode
    serving.write_bytes(b"INFO:     Application startup complete.\n" + text.replace(b"Application startup", b"App"))
    for path in CORPUS_FILES + [serving]:
        expected = _scan(path, fast=False, chunk=1 << 20)
        for chunk in (97, 4096):
            assert _scan(path, fast=True, chunk=chunk) == expected, (path.name, chunk)
