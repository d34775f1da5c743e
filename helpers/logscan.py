"""Streaming scanner for `vllm serve` logs: signatures, phases, evidence, root cause.

The catalog is data (helpers/signatures.yaml). The scanner is fed chunks of any size, live or
from a file, and keeps constant memory: it never stores lines, only bounded hit lists, counts and
extracted evidence.

Two reading modes keep multi-GB logs fast:
- full mode (startup, open tracebacks): every line is parsed and matched (only the regexes one
  of whose required literals is in the line run; all literals found in one pass);
- gated mode (after `Application startup complete`): only lines holding one of the catalog's
  `runtime_gates` substrings are parsed, found for all gates at once in one pass over the whole
  chunk (helpers/multifind.py).

Line numbers are those an editor shows (lines end with \\n). A line may hold several \\r
separated segments (tqdm bars); each is matched on its own and shares the line's number.
"""

from __future__ import annotations

import ast
import os
import re
import time
from bisect import bisect_left
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from helpers.catalog import Catalog, Extractor, load_catalog
from helpers.logline import ANSI, split_prefix
from helpers.multifind import literal_index, multi_find

TRACEBACK_START = "Traceback (most recent call last):"
CHAIN_MARKERS = ("During handling of the above exception", "The above exception was the direct cause")
EXCEPTION_LINE = re.compile(r"^(?P<exc>[A-Za-z_][\w.]*)(?::(?: (?P<detail>.*))?)?$", re.S)
FAILURE_LEVELS = (None, "ERROR", "CRITICAL")
READY_PHASE = "ready"
RESTART_PHASE = "starting"
CAPTURE_PHASE = "capturing graphs"
EXCEPTION_SPECIFICITY = 1     # a traceback's exception line with detail but no known signature

CHUNK_SIZE = 4 << 20          # bytes read per step by scan_file
MAX_SEGMENT = 64 << 10        # longer lines are matched on their first 64 KiB
MAX_PENDING = 1 << 20         # a line without a terminator is cut here (constant memory)
HITS_KEPT = 10                # first and last N hits per signature
TRACEBACK_WINDOW = 400        # an open traceback keeps full mode at most this many lines
TRACEBACKS_KEPT = 20          # first and last N tracebacks
LIST_EVIDENCE_KEPT = 20
INCIDENT_WINDOW = 400         # lines after the first failure that belong to the same incident


# --- records ---------------------------------------------------------------------------------
@dataclass
class Hit:
    sig_id: str
    category: str
    severity: str
    line_no: int
    text: str
    proc: str | None
    hint_zh: str
    hint_en: str
    rung: str | None
    generic: bool = False
    specificity: int = 2
    phase: str = ""               # the scanner's phase when the line was read (capture vs replay)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RootCause:
    line_no: int
    text: str
    exception: str | None
    proc: str | None
    sig_id: str | None
    category: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Traceback:
    """One traceback: where it starts and its first exception line (None while still open)."""

    start_line: int
    proc: str | None
    level: str | None
    exc_line: int | None = None
    exc_text: str | None = None
    exception: str | None = None


# --- scanner ---------------------------------------------------------------------------------
def _convert(kind: str, value: str) -> Any:
    if kind == "int":
        return int(value.replace(",", ""))
    if kind == "float":
        return float(value.replace(",", ""))
    if kind == "dict":
        try:
            parsed = ast.literal_eval(value)
            return parsed if isinstance(parsed, dict) else value
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    return value


class LogScanner:
    """Feed it log text as it arrives; ask it for failures, the root cause, phase and evidence."""

    def __init__(self, catalog: Catalog | None = None) -> None:
        self.catalog = catalog or load_catalog()
        self.gates = multi_find(self.catalog.runtime_gates)
        # the signatures' required literals, then the extractors': one pass per line for all
        self.literals = literal_index(tuple(s.needles for s in self.catalog.signatures)
                                      + tuple(x.needles for x in self.catalog.extractors))
        self.line_no = 0
        self.last_line_at: float | None = None
        self.phase = "starting"
        self.ready_line: int | None = None
        self.stop_line: int | None = None     # lines after it never count as failures
        self.stopped_by: str | None = None    # 'tool' (mark_stop) or the log's own stop line
        self.evidence: dict[str, Any] = {}
        self.evidence_lines: dict[str, int] = {}
        self.hit_counts: dict[str, int] = {}
        self._first_hits: dict[str, list[Hit]] = {}
        self._last_hits: dict[str, deque[Hit]] = {}
        self._tracebacks_first: list[Traceback] = []
        self._tracebacks_last: deque[Traceback] = deque(maxlen=TRACEBACKS_KEPT)
        self._open_tb: dict[str | None, Traceback] = {}
        self._pending = b""
        self._ready = False
        self._finished = False

    # feeding -------------------------------------------------------------------------------
    def feed(self, chunk: bytes | bytearray | str) -> list[Hit]:
        """Scan a chunk (any boundaries); return the hits completed by it. The chunk is not kept:
        the caller may reuse its buffer."""
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "surrogateescape")
        if not chunk:
            return []
        new: list[Hit] = []
        data, pos = chunk, 0
        if self._pending:  # finish the pending line alone: no copy of the whole chunk
            first_end = chunk.find(b"\n") + 1
            if first_end:
                line = self._pending + chunk[:first_end]
                self._consume(line, 0, len(line), new)
                pos = first_end
            else:
                data = self._pending + chunk
        end = max(data.rfind(b"\n") + 1, pos)
        if end:
            self._consume(data, pos, end, new)
            self.last_line_at = time.monotonic()
        rest = data[end:]
        cut = rest.rfind(b"\r")
        if cut >= 0:  # \r-terminated segments (progress bars) are read now, not at the next \n
            head = rest[:cut]
            if self.full_mode or any(gate in head for gate in self.catalog.runtime_gates):
                self._line_segments(head, new)
            rest = rest[cut + 1:]
            self.last_line_at = time.monotonic()
        if len(rest) > MAX_PENDING:
            self._line_segments(rest, new)
            rest = b""
        self._pending = rest
        return new

    def finish(self) -> list[Hit]:
        """Flush a trailing line without a terminator (end of file)."""
        new: list[Hit] = []
        if self._pending:
            self._consume(self._pending + b"\n", 0, len(self._pending) + 1, new)
            self._pending = b""
        self._finished = True
        return new

    def mark_stop(self) -> None:
        """The tool sent its own stop signal: no later line counts as a failure."""
        if self.stop_line is None:
            self.stop_line = self.line_no
            self.stopped_by = "tool"

    @property
    def full_mode(self) -> bool:
        return not self._ready or bool(self._open_tb)

    def _consume(self, data: bytes | bytearray, pos: int, end: int, new: list[Hit]) -> None:
        """Read the complete lines in data[pos:end] (end is just after a \\n)."""
        gate_hits: list[int] | None = None   # searched once per chunk, on the first gated line
        while pos < end:
            if self.full_mode:
                nl = data.find(b"\n", pos, end)
                self._line(data[pos:nl], new)
                pos = nl + 1
            else:
                if gate_hits is None:
                    gate_hits = self.gates.offsets(data, pos, end)
                pos = self._consume_gated(data, pos, end, new, gate_hits)

    def _consume_gated(self, data: bytes | bytearray, pos: int, end: int, new: list[Hit],
                       gate_hits: list[int]) -> int:
        """Jump from gate hit to gate hit; count the lines skipped. Returns where it stopped."""
        find = data.find
        index = bisect_left(gate_hits, pos)
        while index < len(gate_hits):
            at = gate_hits[index]
            start = data.rfind(b"\n", pos, at) + 1 or pos
            stop = find(b"\n", at, end)
            self.line_no += data.count(b"\n", pos, start)
            self._line(data[start:stop], new)
            pos = stop + 1
            if self.full_mode:
                return pos
            index = bisect_left(gate_hits, pos, index + 1)
        self.line_no += data.count(b"\n", pos, end)
        return end

    def _line(self, raw: bytes, new: list[Hit]) -> None:
        """One complete line (without its \\n); its \\r segments share its number."""
        self._line_segments(raw, new)
        self.line_no += 1

    def _line_segments(self, raw: bytes, new: list[Hit]) -> None:
        number = self.line_no + 1
        if b"\r" in raw:
            for seg in raw.split(b"\r"):
                if seg:
                    self._segment(seg, number, new)
        elif raw:
            self._segment(raw, number, new)

    # one segment ---------------------------------------------------------------------------
    def _segment(self, raw: bytes, line_no: int, new: list[Hit]) -> None:
        text = raw[:MAX_SEGMENT].decode("utf-8", "replace")
        if "\x1b" in text:
            text = ANSI.sub("", text)
        if not text.strip():
            self._traceback_line(None, None, "", line_no)
            return
        proc, level, msg, prefixed = split_prefix(text)
        after_stop = self.stop_line is not None and line_no > self.stop_line
        if not after_stop:
            self._traceback_line(proc, level, msg, line_no)
        cat = self.catalog
        for pattern in cat.ignore_lines:
            if pattern.search(text):
                return
        for label, pattern in cat.phases:
            if pattern.search(text):
                self._set_phase(label, line_no)
        for pattern in cat.stop_markers:
            if self.stop_line is None and pattern.search(text):
                self.stop_line = line_no
                self.stopped_by = text.strip()
        candidates = self.literals.candidates(text)
        first_extractor = len(cat.signatures)
        for index in candidates:
            if index < first_extractor:
                continue
            ex = cat.extractors[index - first_extractor]
            if ex.vllm_prefix_only and not prefixed:
                continue
            em = ex.pattern.search(text)
            if em:
                self._record_evidence(ex, em, text, line_no)
        for index in candidates:
            if index >= first_extractor:
                break
            sig = cat.signatures[index]
            if sig.severity == "failure" and after_stop:
                continue
            if sig.pattern.search(text):
                hit = Hit(sig.id, sig.category, sig.severity, line_no, text.strip(), proc, sig.hint_zh, sig.hint_en,
                          sig.rung, sig.generic, sig.specificity, self.phase)
                self._record_hit(hit)
                new.append(hit)

    def _set_phase(self, label: str, line_no: int) -> None:
        if label == READY_PHASE and not self._ready:
            self._ready = True
            self.ready_line = line_no
        elif label == RESTART_PHASE and self._ready:
            self._ready = False  # a new server start in the same log: read it in full
        self.phase = label

    def _record_hit(self, hit: Hit) -> None:
        count = self.hit_counts.get(hit.sig_id, 0) + 1
        self.hit_counts[hit.sig_id] = count
        first = self._first_hits.setdefault(hit.sig_id, [])
        if len(first) < HITS_KEPT:
            first.append(hit)
        else:
            self._last_hits.setdefault(hit.sig_id, deque(maxlen=HITS_KEPT)).append(hit)

    def _record_evidence(self, ex: Extractor, m: re.Match, text: str, line_no: int) -> None:
        key = ex.key
        if ex.kind == "list":
            items = self.evidence.setdefault(key, [])
            if len(items) < LIST_EVIDENCE_KEPT:
                items.append(text.strip())
                self.evidence_lines.setdefault(key, line_no)
            return
        if key in self.evidence and ex.keep != "last":
            return
        value = text.strip() if ex.kind == "line" else _convert(ex.kind, m.group("v"))
        self.evidence[key] = value
        self.evidence_lines[key] = line_no

    def _traceback_line(self, proc: str | None, level: str | None, msg: str, line_no: int) -> None:
        """Group traceback lines per process; remember each traceback's first exception line."""
        if msg.startswith(TRACEBACK_START):
            if proc in self._open_tb:
                return  # a chained traceback inside one still open: keep the first
            tb = Traceback(line_no, proc, level)
            self._open_tb[proc] = tb
            if len(self._tracebacks_first) < TRACEBACKS_KEPT:
                self._tracebacks_first.append(tb)
            else:
                self._tracebacks_last.append(tb)
            return
        tb = self._open_tb.get(proc)
        if tb is None:
            return
        if line_no - tb.start_line > TRACEBACK_WINDOW:
            del self._open_tb[proc]
            return
        if not msg or msg[0] in " \t^~" or msg.startswith(CHAIN_MARKERS):
            return
        m = EXCEPTION_LINE.match(msg.rstrip())
        if m and (m.group("detail") is not None or "." in m.group("exc") or m.group("exc").endswith(
                ("Error", "Exception", "Interrupt", "Exit"))):
            tb.exc_line, tb.exc_text, tb.exception = line_no, msg.strip(), m.group("exc")
        del self._open_tb[proc]

    # questions -----------------------------------------------------------------------------
    @property
    def hits(self) -> list[Hit]:
        out: list[Hit] = []
        for sig_id, first in self._first_hits.items():
            out.extend(first)
            out.extend(self._last_hits.get(sig_id, ()))
        out.sort(key=lambda h: h.line_no)
        return out

    def _before_stop(self, line_no: int) -> bool:
        return self.stop_line is None or line_no <= self.stop_line

    def failures(self, since_line: int = 0) -> list[Hit]:
        """Failure hits after since_line and before the stop (if any), in line order."""
        return [h for h in self.hits if h.severity == "failure" and h.line_no > since_line
                and self._before_stop(h.line_no)]

    def tracebacks(self, since_line: int = 0) -> list[Traceback]:
        tbs = self._tracebacks_first + [t for t in self._tracebacks_last if t not in self._tracebacks_first]
        return [t for t in tbs if t.start_line > since_line and self._before_stop(t.start_line)]

    def root_cause(self, since_line: int = 0) -> RootCause | None:
        """The most specific line of the first incident after since_line. None without failures."""
        return self.incident(since_line)[0]

    def incident(self, since_line: int = 0) -> tuple[RootCause | None, Hit | None]:
        """(root cause, its signature hit) of the first incident: the failure hits from the first
        failure to INCIDENT_WINDOW lines later, plus the first exception line of every failing
        traceback around them. The highest specificity wins (an error code, a CANN error id or a
        known exception text beats an unknown exception with detail, which beats a generic
        wrapper such as `WorkerProc hit an exception.`); ties go to the earliest line."""
        failures = self.failures(since_line)
        if not failures:
            return None, None
        first = failures[0].line_no
        last = first + INCIDENT_WINDOW
        by_line: dict[int, Hit] = {}
        for h in failures:
            if h.line_no > last:
                break
            kept = by_line.get(h.line_no)
            if kept is None or h.specificity > kept.specificity:
                by_line[h.line_no] = h
        exceptions: dict[int, Traceback] = {}
        for tb in self.tracebacks(since_line):
            if tb.exc_line is None or tb.level not in FAILURE_LEVELS or not self._before_stop(tb.exc_line):
                continue
            if first - INCIDENT_WINDOW <= tb.exc_line <= last:
                exceptions.setdefault(tb.exc_line, tb)
        best: tuple[int, int] | None = None
        for line_no in set(by_line) | set(exceptions):
            hit, tb = by_line.get(line_no), exceptions.get(line_no)
            score = hit.specificity if hit else (EXCEPTION_SPECIFICITY if tb and ": " in (tb.exc_text or "") else 0)
            if best is None or (score, -line_no) > (best[0], -best[1]):
                best = (score, line_no)
        assert best is not None
        line_no = best[1]
        hit, tb = by_line.get(line_no), exceptions.get(line_no)
        if tb is not None:
            root = RootCause(line_no, tb.exc_text or "", tb.exception, tb.proc,
                             hit.sig_id if hit else None, hit.category if hit else None)
        else:
            assert hit is not None
            root = RootCause(line_no, hit.text, None, hit.proc, hit.sig_id, hit.category)
        return root, hit

    def to_dict(self) -> dict[str, Any]:
        root = self.root_cause()
        return {
            "lines": self.line_no,
            "phase": self.phase,
            "ready_line": self.ready_line,
            "stop_line": self.stop_line,
            "stopped_by": self.stopped_by,
            "hits": [h.to_dict() for h in self.hits],
            "hit_counts": dict(self.hit_counts),
            "failures": [h.to_dict() for h in self.failures()],
            "root_cause": root.to_dict() if root else None,
            "evidence": dict(self.evidence),
            "evidence_lines": dict(self.evidence_lines),
        }


def scan_file(path: str | Path, catalog: Catalog | None = None, chunk_size: int = CHUNK_SIZE) -> LogScanner:
    """Scan a whole log file in constant memory."""
    scanner = LogScanner(catalog)
    with open(path, "rb") as fh:
        # one buffer, reused: a fresh 4 MiB buffer per read costs page faults; a small file a small one
        buffer = bytearray(min(chunk_size, max(os.fstat(fh.fileno()).st_size + 1, 1 << 16)))
        while True:
            size = fh.readinto(buffer)
            if not size:
                break
            scanner.feed(buffer if size == len(buffer) else buffer[:size])
    scanner.finish()
    return scanner
