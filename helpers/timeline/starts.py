"""Every server start of a model, with its timeline: what `make status` prints as text and what
the report's timeline.png draws. A run without a serve.log (decided without a server) is no start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.runs import read_runs
from helpers.timeline.phases import PROCESS_UP, timeline_of_run


@dataclass
class Start:
    run_dir: Path
    step: str
    verdict: str
    started_at: str
    timeline: dict[str, Any]
    finished_at: str = ""
    parallel: bool = False  # its server ran while another start of the model ran (disjoint NPU groups)

    @property
    def label(self) -> str:
        return f"{self.step} {self.started_at[5:16].replace('T', ' ')}" + (" (parallel)" if self.parallel else "")

    def seen(self) -> list[dict[str, Any]]:
        return [p for p in self.timeline["phases"] if p["status"] == "seen"]

    def unknown(self) -> list[str]:
        return [p["name"] for p in self.timeline["phases"] if p["status"] == "unknown"]


def starts_of(model_dir: Path, last: int | None = None) -> list[Start]:
    """The model's starts, oldest first (the newest `last` when given)."""
    found = []
    for run in read_runs(model_dir):
        log = run.run_dir / str(run.data.get("log") or "serve.log")
        if not log.is_file():
            continue
        found.append(Start(run.run_dir, run.step, str(run.data.get("verdict") or "?"),
                           str(run.data.get("started_at") or ""), timeline_of_run(run.run_dir, run.data),
                           str(run.data.get("finished_at") or "")))
    for start in found:  # ISO UTC stamps of one format compare as text
        start.parallel = bool(start.finished_at) and any(
            other is not start and other.finished_at and other.started_at < start.finished_at
            and start.started_at < other.finished_at for other in found)
    return found[-last:] if last else found


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def render_text(starts: list[Start]) -> str:
    """One block per start: each phase seen with its duration, the log line's own figures and
    line number; the phases with no line in the log named as unknown."""
    if not starts:
        return "phases: no server start recorded yet"
    lines = [f"phases of the last {len(starts)} start(s) (log stamps; unknown = no line in serve.log)"]
    for start in starts:
        timeline = start.timeline
        lines.append(f"  {start.run_dir.name} {start.verdict} (clock from the {timeline['clock']})")
        for phase in start.seen():
            printed = []
            if phase.get("seconds") is not None:
                printed.append(f"log says {phase['seconds']:g} s")
            if phase.get("gib") is not None:
                printed.append(f"{phase['gib']:g} GiB")
            where = f"line {phase['line_no']}" if phase["name"] != PROCESS_UP else "launch to first log line"
            lines.append(f"    {phase['name']:20s} {_seconds(phase['duration_s']):>7s}  at {_seconds(phase['end_s']):>7s}"
                         f"  {where}{'  (' + ', '.join(printed) + ')' if printed else ''}")
        if start.unknown():
            lines.append(f"    unknown: {', '.join(start.unknown())}")
    return "\n".join(lines)
