"""Streaming scanner for `vllm serve` logs: signatures, phases, evidence, root cause.

The catalog is data (helpers/signatures.yaml). The scanner is fed chunks of any size, live or
from a file, and keeps constant memory: it never stores lines, only bounded hit lists, counts and
extracted evidence.

Two reading modes keep multi-GB logs fast:
- full mode (startup, open tracebacks): every line is parsed and matched;
- gated mode (after `Application startup complete`): only lines holding one of the catalog's
  `runtime_gates` substrings are parsed, found with C-speed `bytes.find` over the whole chunk.

Line numbers are those an editor shows (lines end with \\n). A line may hold several \\r
separated segments (tqdm bars); each is matched on its own and shares the line's number.
"""

from __future__ import annotations

import ast
import re
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

from helpers.errors import UsageError

CATALOG_PATH = Path(__file__).with_name("signatures.yaml")
SEVERITIES = ("info", "evidence", "failure")
STAGES = ("startup", "runtime", "any")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# `(APIServer pid=12) INFO 08-14 10:11:12 [file.py:12] message`; one space before the message so
# traceback indentation survives.
VLLM_PREFIX = re.compile(
    r"^\((?P<proc>[^()\s]+) pid=(?P<pid>\d+)\) (?P<level>[A-Z]+) "
    r"(?P<ts>\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)? \[(?P<src>[^\]]*)\] ?(?P<msg>.*)$",
    re.S,
)
# uvicorn: `INFO:     Application startup complete.` (sometimes behind the vLLM proc prefix).
UVICORN = re.compile(r"^(?:\((?P<proc>[^()\s]+) pid=(?P<pid>\d+)\) )?(?P<level>[A-Z]+):\s+(?P<msg>.*)$", re.S)
TRACEBACK_START = "Traceback (most recent call last):"
CHAIN_MARKERS = ("During handling of the above exception", "The above exception was the direct cause")
EXCEPTION_LINE = re.compile(r"^(?P<exc>[A-Za-z_][\w.]*)(?::(?: (?P<detail>.*))?)?$", re.S)
FAILURE_LEVELS = (None, "ERROR", "CRITICAL")
READY_PHASE = "ready"
RESTART_PHASE = "starting"

CHUNK_SIZE = 4 << 20          # bytes read per step by scan_file
MAX_SEGMENT = 64 << 10        # longer lines are matched on their first 64 KiB
MAX_PENDING = 1 << 20         # a line without a terminator is cut here (constant memory)
HITS_KEPT = 10                # first and last N hits per signature
TRACEBACK_WINDOW = 400        # an open traceback keeps full mode at most this many lines
TRACEBACKS_KEPT = 20          # first and last N tracebacks
LIST_EVIDENCE_KEPT = 20


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


# --- catalog ---------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Extractor:
    key: str
    kind: str  # int | float | str | line | dict | list
    pattern: re.Pattern
    needles: tuple[str, ...] | None
    keep: str = "first"
    vllm_prefix_only: bool = False


@dataclass(frozen=True)
class Catalog:
    signatures: tuple[Signature, ...]
    phases: tuple[tuple[str, re.Pattern], ...]
    stop_markers: tuple[re.Pattern, ...]
    ignore_lines: tuple[re.Pattern, ...]
    extractors: tuple[Extractor, ...]
    runtime_gates: tuple[bytes, ...]
    rungs: dict[str, dict[str, str]]

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


def _build_catalog(data: dict[str, Any], where: str) -> Catalog:
    rungs = {str(k): dict(v or {}) for k, v in (data.get("rungs") or {}).items()}
    signatures = []
    seen: set[str] = set()
    for raw in data.get("signatures") or []:
        sig_id = str(raw.get("id", ""))
        missing = [k for k in ("id", "regex", "category", "severity", "stage", "hint_zh", "hint_en", "rung",
                               "example") if not raw.get(k)]
        if missing:
            raise ValueError(f"{where}: signature {sig_id or '?'} lacks {', '.join(missing)}")
        if sig_id in seen:
            raise ValueError(f"{where}: signature id {sig_id} appears twice")
        seen.add(sig_id)
        if raw["severity"] not in SEVERITIES or raw["stage"] not in STAGES:
            raise ValueError(f"{where}: signature {sig_id}: severity {raw['severity']!r} / stage {raw['stage']!r}")
        if rungs and raw["rung"] not in rungs:
            raise ValueError(f"{where}: signature {sig_id}: unknown rung {raw['rung']!r}")
        signatures.append(Signature(
            id=sig_id, regex=raw["regex"], pattern=_compile(sig_id, raw["regex"]), category=raw["category"],
            severity=raw["severity"], stage=raw["stage"], hint_zh=raw["hint_zh"], hint_en=raw["hint_en"],
            rung=None if raw["rung"] == "none" else raw["rung"], example=raw["example"],
            generic=bool(raw.get("generic", False)), needles=required_literals(raw["regex"]),
        ))
    phases = tuple((str(p["label"]), _compile(f"phase {p['label']}", p["regex"])) for p in data.get("phases") or [])
    stops = tuple(_compile("stop marker", r) for r in data.get("stop_markers") or [])
    ignored = tuple(_compile("ignore line", r) for r in data.get("ignore_lines") or [])
    extractors = []
    for raw in data.get("evidence") or []:
        kind = raw.get("kind", "line")
        if kind not in ("int", "float", "str", "line", "dict", "list"):
            raise ValueError(f"{where}: evidence {raw.get('key')}: unknown kind {kind!r}")
        pattern = _compile(f"evidence {raw['key']}", raw["regex"])
        if kind not in ("line", "list") and "v" not in pattern.groupindex:
            raise ValueError(f"{where}: evidence {raw['key']}: kind {kind} needs a (?P<v>...) group")
        extractors.append(Extractor(key=raw["key"], kind=kind, pattern=pattern, needles=required_literals(raw["regex"]),
                                    keep=raw.get("keep", "first"), vllm_prefix_only=bool(raw.get("vllm_prefix_only"))))
    gates = tuple(str(g).encode() for g in data.get("runtime_gates") or [])
    return Catalog(tuple(signatures), phases, stops, ignored, tuple(extractors), gates, rungs)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Catalog:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    return _build_catalog(data, path)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load (once; cached until the file changes) and compile the signature catalog."""
    target = Path(path) if path else CATALOG_PATH
    return _load_cached(str(target), target.stat().st_mtime)


# --- scanner ---------------------------------------------------------------------------------
def _matches(needles: tuple[str, ...] | None, text: str) -> bool:
    if needles is None:
        return True
    for needle in needles:
        if needle in text:
            return True
    return False


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
    def feed(self, chunk: bytes | str) -> list[Hit]:
        """Scan a chunk (any boundaries); return the hits completed by it."""
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "surrogateescape")
        if not chunk:
            return []
        new: list[Hit] = []
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(b"\n") + 1
        if end:
            self._consume(data, 0, end, new)
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

    def _consume(self, data: bytes, pos: int, end: int, new: list[Hit]) -> None:
        """Read the complete lines in data[pos:end] (end is just after a \\n)."""
        while pos < end:
            if self.full_mode:
                nl = data.find(b"\n", pos, end)
                self._line(data[pos:nl], new)
                pos = nl + 1
            else:
                pos = self._consume_gated(data, pos, end, new)

    def _consume_gated(self, data: bytes, pos: int, end: int, new: list[Hit]) -> int:
        """Jump from gate hit to gate hit; count the lines skipped. Returns where it stopped."""
        find = data.find
        upcoming = {}
        for gate in self.catalog.runtime_gates:
            at = find(gate, pos, end)
            if at >= 0:
                upcoming[gate] = at
        while upcoming:
            at = min(upcoming.values())
            start = data.rfind(b"\n", pos, at) + 1 or pos
            stop = find(b"\n", at, end)
            self.line_no += data.count(b"\n", pos, start)
            self._line(data[start:stop], new)
            pos = stop + 1
            if self.full_mode:
                return pos
            for gate, where in list(upcoming.items()):
                if where < pos:
                    nxt = find(gate, pos, end)
                    if nxt >= 0:
                        upcoming[gate] = nxt
                    else:
                        del upcoming[gate]
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
        proc = level = None
        msg = text
        prefixed = False
        m = VLLM_PREFIX.match(text) if text.startswith("(") else None
        if m:
            proc, level, msg, prefixed = m.group("proc"), m.group("level"), m.group("msg"), True
        else:
            u = UVICORN.match(text) if ":" in text[:40] else None
            if u and u.group("level") in ("INFO", "WARNING", "ERROR", "DEBUG", "CRITICAL"):
                proc, level, msg = u.group("proc"), u.group("level"), u.group("msg")
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
        for ex in cat.extractors:
            if ex.vllm_prefix_only and not prefixed:
                continue
            if not _matches(ex.needles, text):
                continue
            em = ex.pattern.search(text)
            if em:
                self._record_evidence(ex, em, text, line_no)
        for sig in cat.signatures:
            if sig.severity == "failure" and after_stop:
                continue
            if not _matches(sig.needles, text):
                continue
            if sig.pattern.search(text):
                hit = Hit(sig.id, sig.category, sig.severity, line_no, text.strip(), proc, sig.hint_zh, sig.hint_en,
                          sig.rung, sig.generic)
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
        """The first exception of the first failing traceback after since_line, else the first
        specific (non-generic) failure hit, else the first failure hit. None without failures."""
        failures = self.failures(since_line)
        if not failures:
            return None
        for tb in self.tracebacks(since_line):
            if tb.exc_line is None or tb.level not in FAILURE_LEVELS:
                continue
            if not self._before_stop(tb.exc_line):
                continue
            sig = self._specific_hit_on(tb.exc_line, failures) or self._specific_hit_between(
                tb.start_line, tb.exc_line, failures)
            return RootCause(tb.exc_line, tb.exc_text or "", tb.exception, tb.proc,
                             sig.sig_id if sig else None, sig.category if sig else None)
        specific = [h for h in failures if not h.generic]
        hit = (specific or failures)[0]
        return RootCause(hit.line_no, hit.text, None, hit.proc, hit.sig_id, hit.category)

    @staticmethod
    def _specific_hit_on(line_no: int, failures: list[Hit]) -> Hit | None:
        on_line = [h for h in failures if h.line_no == line_no]
        specific = [h for h in on_line if not h.generic]
        return (specific or on_line or [None])[0]

    @staticmethod
    def _specific_hit_between(start: int, stop: int, failures: list[Hit]) -> Hit | None:
        for h in failures:
            if start <= h.line_no <= stop and not h.generic:
                return h
        return None

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
        while True:
            chunk = fh.read(chunk_size)
            if not chunk:
                break
            scanner.feed(chunk)
    scanner.finish()
    return scanner


# --- diagnosis -------------------------------------------------------------------------------
@dataclass
class Diagnosis:
    log: str
    verdict: str  # PASS | FAIL | UNKNOWN
    category: str | None = None
    false_ready: bool = False
    root_cause_line: int | None = None
    root_cause: str | None = None
    exception: str | None = None
    sig_id: str | None = None
    hint_zh: str | None = None
    hint_en: str | None = None
    rung: str | None = None
    next_command: str | None = None
    next_why: str | None = None
    phase: str = ""
    lines: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == "FAIL" else 0


def _fill(template: str, values: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), template)


def next_step(scanner: LogScanner, rung: str | None, model: str = "", port: int | None = None) -> tuple[str, str]:
    """The command (and why) for a ladder rung, filled from the log's own evidence."""
    entry = scanner.catalog.rungs.get(rung or "none") or {}
    args = scanner.evidence.get("non_default_args")
    args = args if isinstance(args, dict) else {}
    if not model:
        model = Path(str(args.get("model", ""))).name or "<MODEL>"
    length = scanner.evidence.get("estimated_max_model_len")
    if length is None:
        configured = args.get("max_model_len") or scanner.evidence.get("max_model_len")
        length = int(configured) // 2 if str(configured or "").isdigit() else "<smaller length>"
    values = {"model": model, "max_model_len": length, "port": port or args.get("port", "<PORT>")}
    return _fill(entry.get("command", ""), values), _fill(entry.get("why", ""), values)


def diagnose(path: str | Path, model: str = "", catalog: Catalog | None = None) -> Diagnosis:
    """Read a log and say PASS / FAIL / UNKNOWN, why, and what to try next."""
    target = Path(path)
    if not str(path):
        raise UsageError("no log given", "pass LOG=path/to/server.log")
    if not target.is_file():
        raise UsageError(f"log {target} does not exist or is not a file", "pass LOG=path/to/server.log")
    try:
        scanner = scan_file(target, catalog)
    except OSError as exc:
        raise UsageError(f"cannot read log {target}: {exc.strerror or exc}", "check the path and permissions") from exc
    return diagnosis_of(scanner, str(target), model=model)


def diagnosis_of(scanner: LogScanner, log: str = "", model: str = "") -> Diagnosis:
    failures = scanner.failures()
    diag = Diagnosis(log=log, verdict="PASS" if scanner.ready_line else "UNKNOWN", phase=scanner.phase,
                     lines=scanner.line_no, evidence=dict(scanner.evidence),
                     failures=[h.to_dict() for h in failures[:50]])
    if not failures:
        return diag
    root = scanner.root_cause()
    assert root is not None
    specific = [h for h in failures if not h.generic]
    chosen = None
    if root.sig_id:
        chosen = next((h for h in failures if h.sig_id == root.sig_id and h.line_no == root.line_no), None)
        chosen = chosen or next((h for h in failures if h.sig_id == root.sig_id), None)
    if chosen is None or chosen.generic:
        chosen = specific[0] if specific else (chosen or failures[0])
    first_failure = failures[0].line_no
    diag.verdict = "FAIL"
    diag.false_ready = scanner.ready_line is not None and first_failure > scanner.ready_line
    diag.category = chosen.category if not chosen.generic else ("false-ready" if diag.false_ready else chosen.category)
    diag.root_cause_line, diag.root_cause, diag.exception = root.line_no, root.text, root.exception
    diag.sig_id, diag.hint_zh, diag.hint_en, diag.rung = chosen.sig_id, chosen.hint_zh, chosen.hint_en, chosen.rung
    diag.next_command, diag.next_why = next_step(scanner, chosen.rung, model=model)
    return diag


def render_diagnosis(diag: Diagnosis) -> str:
    """The terminal view of a diagnosis (one fact per line, greppable)."""
    lines = [f"log:        {diag.log} ({diag.lines} lines, last phase: {diag.phase})"]
    if diag.verdict != "FAIL":
        lines.append(f"verdict:    {diag.verdict}" + ("" if diag.verdict == "PASS" else
                                                     " (no failure signature, but the server never reported ready)"))
        return "\n".join(lines)
    kind = f"{diag.category}, false-ready" if diag.false_ready and diag.category != "false-ready" else diag.category
    lines += [
        f"verdict:    FAIL ({kind})",
        f"root cause: line {diag.root_cause_line}: {diag.root_cause}",
        f"signature:  {diag.sig_id}",
        f"hint (zh):  {diag.hint_zh}",
        f"hint (en):  {diag.hint_en}",
    ]
    if diag.rung:
        step = diag.next_command or diag.next_why
        lines.append(f"next rung:  {diag.rung}: {step}")
        if diag.next_command and diag.next_why:
            lines.append(f"            ({diag.next_why})")
    return "\n".join(lines)
