"""The phases of a start read from serve.log (helpers/timeline): durations against the log's own
stamps, the figures a line prints (graph capture seconds and GiB), unknown phases left unknown,
the text `make status` prints, and the data behind timeline.png / capacity.png compared with the
log and capacity.json (not the pixels). Inputs: real logs of the corpus (tests/fixtures/logs) and
small logs written by the tests."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import REPO
from helpers.timeline import charts, phases
from helpers.timeline.report import pictures
from helpers.timeline.starts import Start, render_text, starts_of

LOGS = REPO / "tests" / "fixtures" / "logs"
STAMP = re.compile(r" (\d\d-\d\d \d\d:\d\d:\d\d) \[")


def log_seconds(path: Path, line_no: int) -> float:
    """The stamp of a line (or of the nearest stamped line before it), as the test reads it."""
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")  # editor lines: \r is no break
    for number in range(line_no, 0, -1):
        match = STAMP.search(lines[number - 1])
        if match:
            return datetime.strptime(f"2026-{match.group(1)}", "%Y-%m-%d %H:%M:%S").timestamp()
    raise AssertionError(f"no stamp at or before line {line_no}")


def first_stamp_line(path: Path) -> int:
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")  # editor lines: \r is no break
    return next(i for i, line in enumerate(lines, start=1) if STAMP.search(line))


def test_phases_of_a_real_cpu_start_follow_the_log_stamps():
    log = LOGS / "cpu" / "pass-real.log"
    timeline = phases.timeline_of_log(log, {"verdict": "PASS"})
    zero = log_seconds(log, first_stamp_line(log))
    seen = [p for p in timeline["phases"] if p["status"] == "seen"]
    assert [p["name"] for p in seen] == ["weights loaded", "compiled", "KV cache allocated", "engine initialised",
                                         "ready", "first request"]
    previous = 0.0
    for phase in seen:
        at = log_seconds(log, phase["line_no"]) - zero
        assert phase["end_s"] == pytest.approx(at), phase
        assert phase["duration_s"] == pytest.approx(at - previous), phase
        previous = at
    by_name = {p["name"]: p for p in timeline["phases"]}
    weights = by_name["weights loaded"]
    assert "Loading weights took" in weights["text"] and weights["seconds"] == float(
        re.search(r"took ([\d.]+) seconds", weights["text"]).group(1))
    assert by_name["engine initialised"]["seconds"] == 26.86
    # the CPU backend captures no graphs and replays none: unknown, and no figure invented
    for name in ("graph captured", "replay seen", "process up"):
        assert by_name[name]["status"] == "unknown" and by_name[name]["duration_s"] is None
    assert timeline["graph_capture"] is None and timeline["clock"] == "first log line"
    # uvicorn's access line has no stamp of its own: it is placed at the line before it
    request = by_name["first request"]
    assert "POST /v1/chat/completions" in request["text"] and request["stamped"] is False


def test_graph_capture_seconds_and_gib_of_every_worker():
    log = LOGS / "ascend" / "v0.11" / "moe-ep-graph-capture.log"
    timeline = phases.timeline_of_log(log, {})
    graph = timeline["graph_capture"]
    lines = [line for line in log.read_text().splitlines() if "Graph capturing finished" in line]
    assert graph["lines"] == len(lines) == 2, "one line per worker (TP 2)"
    assert (graph["seconds"], graph["gib"]) == (22.0, 0.26)
    assert graph["line_no"] == 2 and graph["text"] == lines[0]
    captured = next(p for p in timeline["phases"] if p["name"] == "graph captured")
    assert (captured["seconds"], captured["gib"], captured["status"]) == (22.0, 0.26, "seen")


def test_the_failure_line_of_the_record_ends_a_failed_start(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("(APIServer pid=1) INFO 03-01 10:00:00 [api_server.py:1] vLLM API server version 0.11.0\n"
                   "(Worker pid=2) INFO 03-01 10:00:30 [default_loader.py:262] Loading weights took 30.00 seconds\n"
                   "(Worker pid=2) ERROR 03-01 10:01:05 [worker.py:9] RuntimeError: NPU out of memory.\n")
    record = {"verdict": "FAIL", "root_cause": {"line_no": 3, "text": "RuntimeError: NPU out of memory."}}
    timeline = phases.timeline_of_log(log, record)
    by_name = {p["name"]: p for p in timeline["phases"]}
    assert (by_name["weights loaded"]["end_s"], by_name["failure"]["end_s"]) == (30.0, 65.0)
    assert by_name["failure"]["duration_s"] == 35.0 and by_name["ready"]["status"] == "unknown"
    text = render_text([Start(tmp_path, "stage-b", "FAIL", "2026-03-01T10:00:00+00:00", timeline)])
    assert "failure" in text and "35 s" in text and "line 3" in text
    assert "unknown: process up, compiled, KV cache allocated, graph captured, engine initialised, ready" in text


def test_process_up_is_measured_only_by_the_run_that_started_the_server(tmp_path):
    """A log this machine just wrote (local stamps, as vLLM's logger writes them): the run itself
    knows launch -> first line; the same log read later, or a replayed log of another day, does not."""
    started = time.time() - 20
    first = datetime.fromtimestamp(started + 3).strftime("%m-%d %H:%M:%S")
    ready = datetime.fromtimestamp(started + 15).strftime("%m-%d %H:%M:%S")
    log = tmp_path / "serve.log"
    log.write_text(f"(APIServer pid=1) INFO {first} [api_utils.py:1] non-default args: {{}}\n"
                   f"(APIServer pid=1) INFO {ready} [entry.py:140] Starting vLLM server on http://127.0.0.1:1\n")
    record = {"started_at": datetime.fromtimestamp(int(started)).astimezone().isoformat(),
              "timings": {"start_to_ready_s": 16.0}}
    at_end = phases.timeline_of_log(log, record, at_run_end=True)
    up = at_end["phases"][0]
    assert up["name"] == "process up" and up["status"] == "seen" and up["duration_s"] in (3.0, 4.0)
    assert at_end["clock"] == "process start"
    ready_phase = next(p for p in at_end["phases"] if p["name"] == "ready")
    assert ready_phase["end_s"] == pytest.approx(up["duration_s"] + 12.0)
    assert phases.timeline_of_log(log, record)["phases"][0]["status"] == "unknown"
    replayed = dict(record, started_at="2026-01-05T10:00:00+00:00")
    assert phases.timeline_of_log(log, replayed, at_run_end=True)["phases"][0]["status"] == "unknown"


def make_start(runs: Path, name: str, log_source: Path, verdict: str = "PASS", finished: str = "") -> Path:
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    (run_dir / "serve.log").write_bytes(log_source.read_bytes())
    (run_dir / "evidence.json").write_text(json.dumps({
        "step": name.split("-", 1)[1], "stage": "b", "verdict": verdict, "log": "serve.log",
        "started_at": f"2026-11-21T{name[9:11]}:{name[11:13]}:{name[13:15]}+00:00",
        "finished_at": f"2026-11-21T{finished}+00:00" if finished else None, "run_dir": str(run_dir)}))
    return run_dir


def test_starts_that_ran_at_the_same_time_are_marked_parallel(tmp_path):
    model_dir = tmp_path / "runs" / "m"
    make_start(model_dir, "20261121T211100Z-stage-a", LOGS / "cpu" / "pass-dummy.log", finished="21:12:00")
    make_start(model_dir, "20261121T211130Z-ep", LOGS / "cpu" / "pass-dummy.log", finished="21:12:30")
    make_start(model_dir, "20261121T211300Z-stage-b", LOGS / "cpu" / "pass-real.log", finished="21:14:00")
    assert [(s.step, s.parallel) for s in starts_of(model_dir)] == [("stage-a", True), ("ep", True),
                                                                    ("stage-b", False)]
    assert charts.timeline_bars(starts_of(model_dir))[0]["label"] == "stage-a 11-21 21:11 (parallel)"


def test_the_timeline_chart_draws_each_seen_phase_of_each_start(tmp_path):
    model_dir = tmp_path / "runs" / "m"
    make_start(model_dir, "20261121T211100Z-stage-a", LOGS / "cpu" / "pass-dummy.log")
    make_start(model_dir, "20261121T211200Z-stage-b", LOGS / "cpu" / "pass-real.log")
    (model_dir / "20261121T211300Z-ep").mkdir()  # decided without a server: no start
    (model_dir / "20261121T211300Z-ep" / "evidence.json").write_text(json.dumps({"step": "ep", "verdict": "NOT_APPLICABLE"}))
    starts = starts_of(model_dir)
    assert [s.step for s in starts] == ["stage-a", "stage-b"]
    bars = charts.timeline_bars(starts)
    for row, start in enumerate(starts):
        mine = [b for b in bars if b["row"] == row]
        assert [(b["phase"], b["left"], b["width"]) for b in mine] == [
            (p["name"], p["start_s"], p["duration_s"]) for p in start.timeline["phases"] if p["status"] == "seen"]
    stage_b = [b for b in bars if b["row"] == 1]
    assert sum(b["width"] for b in stage_b) == pytest.approx(stage_b[-1]["left"] + stage_b[-1]["width"])
    out = tmp_path / "deliverables"
    shown = pictures(model_dir, out)
    assert shown["timeline_png"] == "timeline.png" and shown["capacity_png"] is None
    assert (model_dir / "timeline.png").read_bytes()[:4] == b"\x89PNG" and (out / "timeline.png").is_file()
    assert [s["run"] for s in shown["starts"]] == [s.run_dir.name for s in starts]
    text = render_text(starts_of(model_dir, last=1))
    assert "20261121T211200Z-stage-b PASS" in text and "stage-a" not in text


def test_capacity_chart_data_is_capacity_json_one_point_per_measured_cell(tmp_path):
    doc = json.loads((REPO / "tests/fixtures/evidence/tiny-qwen2/capacity.json").read_text())
    doc["cells"].append({"key": "s8-l4096", "max_num_seqs": 8, "max_model_len": 4096, "verdict": "FAIL",
                         "metrics": {}, "server_metrics": {}})
    points = charts.capacity_points(doc)
    assert len(points) == 1, "the failed cell measured nothing"
    cell = doc["cells"][0]
    assert points[0]["max_num_seqs"] == cell["max_num_seqs"] and points[0]["max_model_len"] == cell["max_model_len"]
    assert points[0]["output_throughput"] == cell["metrics"]["output_throughput"]
    assert points[0]["p99_ttft_ms"] == cell["metrics"]["p99_ttft_ms"]
    assert points[0]["p50_ttft_ms"] is None, "a metric capacity.json lacks is not drawn"
    assert points[0]["kv_cache_usage_perc"] == 1.0
    path = charts.draw_capacity(doc, tmp_path / "capacity.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_without_matplotlib_one_line_says_so_and_nothing_is_drawn(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    model_dir = tmp_path / "runs" / "m"
    make_start(model_dir, "20261121T211200Z-stage-b", LOGS / "cpu" / "pass-real.log")
    with pytest.raises(charts.ChartsUnavailable) as failure:
        charts.draw_capacity({"cells": []}, tmp_path / "capacity.png")
    assert "\n" not in str(failure.value) and "matplotlib is not installed" in str(failure.value)
    shown = pictures(model_dir, tmp_path / "out")
    assert shown["timeline_png"] is None and shown["charts_missing"].startswith("matplotlib is not installed")
    assert len(shown["starts"]) == 1 and not (model_dir / "timeline.png").exists()


def test_a_later_line_of_the_same_milestone_adds_the_figure_the_first_lacked(tmp_path):
    """vllm-ascend prints the load time (vLLM's loader) and then the weights' memory (its model runner)."""
    log = tmp_path / "serve.log"
    log.write_text("(EngineCore_DP0 pid=299) INFO 12-15 11:45:00 [core.py:1] Initializing a V1 LLM engine (v0.11.0)\n"
                   "(EngineCore_DP0 pid=299) INFO 12-15 11:45:16 [default_loader.py:267] Loading weights took 2.07 seconds\n"
                   "(EngineCore_DP0 pid=299) INFO 12-15 11:45:17 [model_runner_v1.py:2705] Loading model weights took 15.2684 GB\n")
    weights = next(p for p in phases.timeline_of_log(log, {})["phases"] if p["name"] == "weights loaded")
    assert (weights["seconds"], weights["gib"], weights["line_no"], weights["end_s"]) == (2.07, 15.2684, 2, 16.0)


def test_each_capacity_cell_is_reproduced_by_vllm_bench_serve_with_its_own_load(tmp_path):
    """The command beside capacity.png (report) and under the tutorial's Performance table: the
    load the cell sent (loadgen's own argv), against the server its command.sh starts."""
    from helpers import loadgen
    from helpers.templating import render
    from helpers.timeline.report import bench_command

    run_dir = tmp_path / "20261121T213800Z-capacity-s4-l4096"
    run_dir.mkdir()
    argv = ["vllm", "serve", "/models/Qwen3-8B", "--served-model-name", "Qwen3-8B", "--port", "8011",
            "--max-num-seqs", "4", "--max-model-len", "4096", "--trust-remote-code"]
    (run_dir / "evidence.json").write_text(json.dumps({"model_path": "/models/Qwen3-8B", "command": {"argv": argv}}))
    cell = {"key": "s4-l4096", "max_num_seqs": 4, "max_model_len": 4096, "input_len": 3968, "output_len": 128,
            "num_prompts": 4, "verdict": "PASS", "run_dir": str(run_dir)}
    expected = loadgen.bench_serve_argv(url="http://127.0.0.1:8011", model_path="/models/Qwen3-8B",
                                        served_name="Qwen3-8B", input_len=3968, output_len=128, num_prompts=4,
                                        concurrency=4, result_dir=".", result_filename="bench-s4-l4096.json",
                                        trust_remote_code=True)
    assert bench_command(cell) == " ".join(expected)
    assert bench_command(dict(cell, run_dir=str(tmp_path / "gone"))) is None, "no evidence: no command invented"
    text = render("tutorial_bench.md.j2", pictures={"bench": [{"key": "s4-l4096", "command": bench_command(cell)}]})
    assert "# s4-l4096\n" + " ".join(expected) in text


def test_torchair_graph_mode_ends_its_capture_at_the_last_batch_size_and_prints_no_figures(tmp_path):
    """Lines of the v0.11 torchair start (helpers/replay/scenarios/v0.11-qwen3-30b-a3b.yaml, from vllm-ascend#4807)."""
    prefix = "(EngineCore_DP0 pid=109513) (Worker_TP0_EP0 pid=109520) INFO 12-10"
    log = tmp_path / "serve.log"
    log.write_text(f"{prefix} 03:09:10 [torchair_model_runner.py:283] Capturing torchair graph, this usually takes 1.5~4.5 mins.\n"
                   f"{prefix} 03:09:30 [torchair_model_runner.py:247] Batchsize 16 is compiled successfully: 1/3.\n"
                   f"{prefix} 03:09:31 [torchair_model_runner.py:247] Batchsize 8 is compiled successfully: 2/3.\n"
                   f"{prefix} 03:09:33 [torchair_model_runner.py:247] Batchsize 4 is compiled successfully: 3/3.\n")
    timeline = phases.timeline_of_log(log, {})
    captured = next(p for p in timeline["phases"] if p["name"] == "graph captured")
    assert (captured["line_no"], captured["end_s"], captured["seconds"], captured["gib"]) == (4, 23.0, None, None)
    assert timeline["graph_capture"]["seconds"] is None and timeline["graph_capture"]["gib"] is None
