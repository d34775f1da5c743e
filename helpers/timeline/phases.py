"""The phases of one server start, from its serve.log: each milestone of phases.yaml (weights
loaded, compiled, KV cache allocated, graph captured, engine initialised, ready, first request,
replay seen) with the time it was logged on the log's own clock (`MM-DD HH:MM:SS` stamps), the
phase before it (from the previous milestone found), and the seconds / GiB the line itself
prints. The failure's root-cause line (evidence.json) is the last milestone of a failed start.

Clock: zero is the first stamped line. The time from the process launch to that line ("process
up") is measured only when the run itself ends (same machine, same clock and time zone as the
server that wrote the stamps; the first stamp must fall within the run's start-to-ready time): a
log read later (copied, replayed, an older run) leaves it unknown.
A line without a stamp of its own (uvicorn's) is placed at the stamp of the line before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any


from helpers import load_yaml
from helpers import ascend_facts
from helpers.logline import ANSI

RULES_PATH = Path(__file__).with_name("phases.yaml")
SCHEMA = 1
PROCESS_UP = "process up"
FAILURE = "failure"
GRAPH = "graph captured"
STAMP = re.compile(r"\b(?:INFO|WARNING|ERROR|DEBUG|CRITICAL) (\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)")
CLOCK_SLACK_S = 5.0  # stamps have whole seconds; started_at too


@dataclass(frozen=True)
class Wording:
    regex: re.Pattern
    needle: str
    source: str


@dataclass(frozen=True)
class Rule:
    name: str
    wordings: tuple[Wording, ...]
    after: str | None = None


@lru_cache(maxsize=1)
def rules() -> tuple[Rule, ...]:
    data = load_yaml(RULES_PATH.read_text(encoding="utf-8"))
    facts = ascend_facts.load()
    unknown = [w["fact"] for m in data["milestones"] for w in m["lines"] if w.get("fact") and w["fact"] not in facts]
    if unknown:
        raise ValueError(f"{RULES_PATH.name}: facts not in helpers/ascend_facts.yaml: {', '.join(unknown)}")
    return tuple(Rule(m["name"], tuple(Wording(re.compile(w["regex"]), w["needle"], w["source"]) for w in m["lines"]),
                      m.get("after")) for m in data["milestones"])


def milestone_names() -> list[str]:
    return [PROCESS_UP] + [rule.name for rule in rules()] + [FAILURE]


@dataclass
class Milestone:
    name: str
    line_no: int
    stamp: float                 # seconds on the log's clock (see stamp_of)
    stamped: bool                # False: the line has no stamp; the one of the line before is used
    text: str
    seconds: float | None = None  # what the line prints (`took 3.10 seconds`)
    gib: float | None = None

    @property
    def complete(self) -> bool:
        """Both figures known: later lines of this milestone have nothing to add."""
        return self.seconds is not None and self.gib is not None


@dataclass
class LogReading:
    first_stamp: float | None = None
    first_stamp_text: str = ""
    first_line_no: int | None = None
    found: dict[str, Milestone] = field(default_factory=dict)
    graph_lines: list[Milestone] = field(default_factory=list)  # one per worker with TP > 1


def stamp_of(match: re.Match) -> float:
    """Seconds since 1 January of a leap year (a log across 29 February keeps its order)."""
    month, day, hour, minute, second = (int(g) for g in match.groups())
    moment = datetime(2000, month, day, hour, minute, second)
    return (moment - datetime(2000, 1, 1)).total_seconds()


def _number(match: re.Match, group: str) -> float | None:
    value = match.groupdict().get(group)
    return float(value) if value is not None else None


def read_log(path: Path, failure_line: int | None = None) -> LogReading:
    """One pass over the log; stops once every milestone (and the failure line) has been seen."""
    reading = LogReading()
    wanted = {rule.name for rule in rules()}
    last: float | None = None
    year_offset = 0.0
    with Path(path).open("r", encoding="utf-8", errors="replace", newline="\n") as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = ANSI.sub("", raw.rstrip("\n")) if "\x1b" in raw else raw.rstrip("\n")
            match = STAMP.search(line)
            stamped = match is not None
            if match:
                stamp = stamp_of(match) + year_offset
                if last is not None and stamp < last - 180 * 86400:  # the log crossed New Year
                    year_offset += 366 * 86400
                    stamp += 366 * 86400
                last = stamp
                if reading.first_stamp is None:
                    reading.first_stamp, reading.first_stamp_text = stamp, match.group(0).split(" ", 1)[1]
                    reading.first_line_no = line_no
            if last is None:
                continue
            if failure_line is not None and line_no == failure_line:
                reading.found[FAILURE] = Milestone(FAILURE, line_no, last, stamped, line.strip()[:300])
            for rule in rules():
                seen = reading.found.get(rule.name)
                if (rule.after and rule.after not in reading.found) or (seen and seen.complete and rule.name != GRAPH):
                    continue
                for wording in rule.wordings:
                    if wording.needle not in line:
                        continue
                    hit = wording.regex.search(line)
                    if hit:
                        milestone = Milestone(rule.name, line_no, last, stamped, line.strip()[:300],
                                              _number(hit, "seconds"), _number(hit, "gib"))
                        if seen is None:
                            reading.found[rule.name] = milestone
                        else:  # a later line of the same milestone adds the figure the first lacked
                            seen.seconds = seen.seconds if seen.seconds is not None else milestone.seconds
                            seen.gib = seen.gib if seen.gib is not None else milestone.gib
                        if rule.name == GRAPH:
                            reading.graph_lines.append(milestone)
                        break
            if wanted <= set(reading.found) and (failure_line is None or line_no >= failure_line):
                break
    return reading


def _epoch(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp() if iso else None
    except ValueError:
        return None


def process_up_seconds(reading: LogReading, record: dict[str, Any]) -> float | None:
    """Launch -> first stamped line, where the log's clock is this machine's local clock."""
    started = _epoch(record.get("started_at"))
    if started is None or reading.first_stamp is None:
        return None
    year = datetime.fromtimestamp(started).year
    try:  # naive = local time, as vLLM's logger wrote it
        first = datetime.strptime(f"{year}-{reading.first_stamp_text}", "%Y-%m-%d %H:%M:%S").timestamp()
    except ValueError:  # 29 February of a log from another year
        return None
    ready_s = float((record.get("timings") or {}).get("start_to_ready_s") or 0.0)
    up = first - started
    return round(max(up, 0.0), 1) if -CLOCK_SLACK_S <= up <= ready_s + CLOCK_SLACK_S else None


def timeline_of_log(path: Path, record: dict[str, Any], *, at_run_end: bool = False) -> dict[str, Any]:
    """The timeline record (kept as evidence.json `timeline`); at_run_end: called by the run that
    started the server, on its machine (only then is "process up" measured)."""
    cause = record.get("root_cause") if record.get("verdict") == "FAIL" else None
    failure_line = cause.get("line_no") if isinstance(cause, dict) else None
    try:
        reading = read_log(path, failure_line if isinstance(failure_line, int) else None)
    except OSError:
        reading = LogReading()
    up = process_up_seconds(reading, record) if at_run_end else None
    zero = reading.first_stamp
    phases: list[dict[str, Any]] = [{"name": PROCESS_UP, "status": "seen" if up is not None else "unknown",
                                     "start_s": 0.0 if up is not None else None,
                                     "end_s": up, "duration_s": up, "line_no": reading.first_line_no,
                                     "stamped": True, "text": reading.first_stamp_text, "seconds": None, "gib": None}]
    offset = up or 0.0
    previous = 0.0
    for milestone in sorted(reading.found.values(), key=lambda m: m.line_no):
        at = round(milestone.stamp - (zero or 0.0), 1)
        phases.append({"name": milestone.name, "status": "seen", "start_s": round(offset + previous, 1),
                       "end_s": round(offset + at, 1), "duration_s": round(at - previous, 1),
                       "line_no": milestone.line_no, "stamped": milestone.stamped, "text": milestone.text,
                       "seconds": milestone.seconds, "gib": milestone.gib})
        previous = at
    seen = {p["name"] for p in phases}
    for name in milestone_names():
        if name not in seen and (name != FAILURE or failure_line):
            phases.append({"name": name, "status": "unknown", "start_s": None, "end_s": None, "duration_s": None,
                           "line_no": None, "stamped": None, "text": "", "seconds": None, "gib": None})
    graphs = reading.graph_lines
    graph = None
    if graphs:
        # one line per worker with TP > 1: the slowest and the largest; a figure no line prints stays None
        graph = {"seconds": max((m.seconds for m in graphs if m.seconds is not None), default=None),
                 "gib": max((m.gib for m in graphs if m.gib is not None), default=None),
                 "lines": len(graphs), "line_no": graphs[0].line_no, "text": graphs[0].text}
    return {"schema": SCHEMA, "clock": "process start" if up is not None else "first log line",
            "first_stamp": reading.first_stamp_text or None, "phases": phases, "graph_capture": graph}


def timeline_of_run(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """evidence.json's own timeline, else (a run recorded before timelines) read from its log."""
    kept = record.get("timeline")
    if isinstance(kept, dict) and kept.get("schema") == SCHEMA:
        return kept
    return timeline_of_log(Path(run_dir) / str(record.get("log") or "serve.log"), record)
