"""Where a failure happened (weight load, KV-cache allocation, graph capture, first request,
replay, HCCL initialisation) and that phase's fix (phases.yaml beside this file); and the root
cause when no signature names one: the last exception of the failing process, never an HTTP
access line or a wrapper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


from helpers import load_yaml
from helpers.logscan import FAILURE_LEVELS, LogScanner, RootCause

PHASES_PATH = Path(__file__).with_name("phases.yaml")
FRAME = re.compile(r'File "[^"]+", line \d+, in (\w+)')
HTTP_ACCESS = re.compile(r'"(?:GET|POST|PUT|DELETE) [^"]*" \d{3}')
FRAMES_BEFORE = 300  # a worker's traceback is long; its frames precede the exception line
FRAMES_AFTER = 120   # wrappers (EngineCore, API server) print theirs after it
TAIL_BYTES = 65536
RELAY_PROCESSES = ("APIServer",)  # it only relays the engine's death
WEIGHTS_LABEL, KV_LABEL = "loading weights", "profiling / KV cache"  # helpers/signatures.yaml phase labels


@dataclass(frozen=True)
class PhaseRule:
    id: str
    name: str
    frames: tuple[str, ...]
    labels: tuple[str, ...]
    last_line: re.Pattern | None


@dataclass(frozen=True)
class Advice:
    phase: str
    rung: str
    hint_en: str
    hint_zh: str
    memory: bool = False
    categories: tuple[str, ...] = ()
    match: re.Pattern | None = None


@dataclass(frozen=True)
class PhaseBook:
    phases: tuple[PhaseRule, ...]
    advice: tuple[Advice, ...]
    memory_text: re.Pattern

    def rule(self, phase_id: str) -> PhaseRule | None:
        return next((r for r in self.phases if r.id == phase_id), None)


@lru_cache(maxsize=2)
def load(path: str = str(PHASES_PATH)) -> PhaseBook:
    with open(path, encoding="utf-8") as handle:
        data = load_yaml(handle) or {}
    phases = tuple(PhaseRule(str(p["id"]), str(p["name"]), tuple(p.get("frames") or ()), tuple(p.get("labels") or ()),
                             re.compile(p["last_line"]) if p.get("last_line") else None) for p in data["phases"])
    advice = tuple(Advice(str(a["phase"]), str(a["rung"]), str(a["hint_en"]), str(a["hint_zh"]), bool(a.get("memory")),
                          tuple(a.get("categories") or ()), re.compile(a["match"]) if a.get("match") else None)
                   for a in data["advice"])
    return PhaseBook(phases, advice, re.compile(data["memory_text"]))


@dataclass
class Placed:
    """The phase of a failure and what placed it there (a traceback frame, the log's phase, the last line)."""

    phase: str
    name: str
    how: str

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "name": self.name, "how": self.how}


def _window(log: Path, first: int, last: int) -> list[tuple[int, str]]:
    found = []
    try:
        with log.open("r", encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if number > last:
                    break
                if number >= first:
                    found.append((number, line.rstrip("\n")))
    except OSError:
        return []
    return found


def last_line(log: Path | None, total: int = 0) -> tuple[int | None, str]:
    """The log's last non-empty line and its number (None when unknown)."""
    if log is None or not log.is_file():
        return None, ""
    with log.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - TAIL_BYTES))
        lines = handle.read().decode("utf-8", errors="replace").splitlines()
    for back, line in enumerate(reversed(lines)):
        if line.strip():
            return (total - back if total else None), line.strip()
    return None, ""


def _placed(rule: PhaseRule, how: str) -> Placed:
    return Placed(rule.id, rule.name, how)


def classify(log: Path | None, *, line_no: int | None, label: str, ready_line: int | None,
             replay: bool = False, weights_loaded_line: int | None = None) -> Placed | None:
    """The phase of a failure at `line_no` (the scanner's phase `label` when it was read;
    `weights_loaded_line`: the `Loading weights took` line, after which the profile run sizes the KV cache)."""
    book = load()
    if label == WEIGHTS_LABEL and weights_loaded_line and line_no and line_no > weights_loaded_line:
        label = KV_LABEL  # the weights were in: what runs next is the profile run that sizes the KV cache
    if line_no and ready_line and line_no > ready_line:
        rule = book.rule("replay" if replay else "first-request")
        return _placed(rule, f"after ready (serve.log line {ready_line})") if rule else None
    if log is not None and line_no:
        lines = _window(log, max(1, line_no - FRAMES_BEFORE), line_no + FRAMES_AFTER)
        frames = [(n, m.group(1)) for n, text in lines for m in [FRAME.search(text)] if m]
        # the innermost frame of the failing traceback (before its exception line) decides; the
        # wrappers' tracebacks after it only when the failing one names no phase
        for group in ([f for f in frames if f[0] <= line_no], [f for f in frames if f[0] > line_no]):
            for number, function in reversed(group):
                rule = next((r for r in book.phases if function in r.frames), None)
                if rule:
                    return _placed(rule, f"traceback frame {function} (serve.log line {number})")
    rule = next((r for r in book.phases if label and label in r.labels), None)
    if rule:
        return _placed(rule, f"log phase '{label}'")
    fallback = book.rule("startup") if line_no else None  # before ready, but no frame or label names the phase
    return _placed(fallback, f"before ready, last log phase '{label or '?'}'") if fallback else None


def classify_stall(log: Path | None, label: str, total: int = 0) -> tuple[Placed | None, int | None, str]:
    """A start that never ended: its phase from its last line (else the log's phase), and that line."""
    number, text = last_line(log, total)
    book = load()
    rule = next((r for r in book.phases if r.last_line and text and r.last_line.search(text)), None)
    if rule:
        return _placed(rule, f"last line (serve.log line {number})"), number, text
    return classify(None, line_no=None, label=label, ready_line=None), number, text


def advise(placed: Placed | None, category: str | None, root_text: str) -> Advice | None:
    """The phase's fix for this failure, or None (the signature's own advice stands)."""
    if placed is None:
        return None
    book = load()
    memory = bool(root_text and book.memory_text.search(root_text)) or category == "oom"
    for advice in book.advice:
        if advice.phase not in (placed.phase, "any"):
            continue
        if advice.match is not None:
            if root_text and advice.match.search(root_text):
                return advice
            continue
        if (advice.memory and memory) or (category and category in advice.categories):
            return advice
    return None


def is_relay(text: str) -> bool:
    """An HTTP access line: it says a request failed, never why."""
    return bool(HTTP_ACCESS.search(text or ""))


def last_exception(scanner: LogScanner, since_line: int = 0) -> RootCause | None:
    """The last exception (type and message) of the failing process: the first process other
    than the API server that logged a failing traceback, else the API server."""
    tracebacks = [t for t in scanner.tracebacks(since_line) if t.exc_line and t.level in FAILURE_LEVELS]
    if not tracebacks:
        return None
    engine = [t for t in tracebacks if not str(t.proc or "").startswith(RELAY_PROCESSES)] or tracebacks
    failing = engine[0].proc
    chosen = [t for t in engine if t.proc == failing][-1]
    return RootCause(chosen.exc_line, chosen.exc_text or "", chosen.exception, chosen.proc, None, None)
