"""What the report shows of the timelines and the capacity sweep: timeline.png (every start of the
model) and capacity.png under RUNS_DIR/<model>/, copied beside the report; the phase table and the
graph capture's seconds and GiB per start; the `vllm bench serve` command that reproduces each
capacity cell against a server started with that cell's command.sh."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from helpers import evidence as ev
from helpers import loadgen
from helpers.timeline.charts import CAPACITY_PNG, TIMELINE_PNG, ChartsUnavailable, draw_capacity, draw_timeline
from helpers.timeline.phases import milestone_names
from helpers.timeline.starts import Start, starts_of


def _row(start: Start) -> dict[str, Any]:
    by_name = {p["name"]: p for p in start.timeline["phases"]}
    return {"run": start.run_dir.name, "step": start.step, "verdict": start.verdict, "parallel": start.parallel,
            "clock": start.timeline["clock"], "graph_capture": start.timeline.get("graph_capture"),
            "durations": [by_name.get(name, {}).get("duration_s") for name in milestone_names()]}


def bench_command(cell: dict[str, Any]) -> str | None:
    """`vllm bench serve` with the cell's own load (concurrency, lengths, prompts) against the
    server its command.sh starts."""
    record = None
    if cell.get("run_dir"):
        try:
            record = ev.read_json(Path(cell["run_dir"]) / "evidence.json")
        except (OSError, ValueError):
            record = None
    argv = ((record or {}).get("command") or {}).get("argv") or []
    if not argv or not cell.get("input_len"):
        return None

    def flag(name: str, default: str) -> str:
        return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else default

    model_path = str(record.get("model_path") or "")
    argv_bench = loadgen.bench_serve_argv(
        url=f"http://127.0.0.1:{flag('--port', '8000')}", model_path=model_path,
        served_name=flag("--served-model-name", model_path), input_len=int(cell["input_len"]),
        output_len=int(cell["output_len"]), num_prompts=int(cell.get("num_prompts") or cell["max_num_seqs"]),
        concurrency=int(cell["max_num_seqs"]), result_dir=".", result_filename=f"bench-{cell.get('key')}.json",
        trust_remote_code="--trust-remote-code" in argv)
    return shlex.join(argv_bench)


def pictures(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Draw the charts (RUNS_DIR/<model>/timeline.png, capacity.png), copy them beside the report
    and return what the report template shows. Without matplotlib: no picture, one note."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    starts = starts_of(model_dir)
    capacity = None
    if (model_dir / "capacity.json").is_file():
        try:
            capacity = ev.read_json(model_dir / "capacity.json")
        except (OSError, ValueError):
            capacity = None
    shown: dict[str, Any] = {"phase_names": milestone_names(), "starts": [_row(s) for s in starts],
                             "timeline_png": None, "capacity_png": None, "charts_missing": "",
                             "bench": [{"key": c.get("key"), "run_dir": c.get("run_dir"), "command": bench_command(c)}
                                       for c in (capacity or {}).get("cells") or [] if c.get("verdict") == "PASS"]}
    try:
        drawn = []
        if starts:
            drawn.append((draw_timeline(starts, model_dir / TIMELINE_PNG), "timeline_png"))
        if capacity and capacity.get("cells"):
            drawn.append((draw_capacity(capacity, model_dir / CAPACITY_PNG), "capacity_png"))
        for path, key in drawn:
            out_dir.mkdir(parents=True, exist_ok=True)
            if path.parent.resolve() != out_dir.resolve():
                shutil.copyfile(path, out_dir / path.name)
            shown[key] = path.name
    except ChartsUnavailable as exc:
        shown["charts_missing"] = str(exc)
    return shown
