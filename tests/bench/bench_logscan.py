"""Benchmark the log scanner on a generated multi-GB serving log (not a pytest test).

    PYTHONPATH=. python tests/bench/bench_logscan.py [--size-mb 1024] [--path /tmp/bench-vllm.log]

The log is a real CPU-backend startup (tests/fixtures/logs/cpu/pass-real.log up to
`Application startup complete`), then hours of serving traffic (access lines, engine metrics,
request logging with long prompts, a periodic warning), and at the very end a real false-ready
crash (the worker traceback of tests/fixtures/logs/cpu/false-ready-hd40.log). The scan runs in a
child process so its peak RSS is measured alone; the file is read from the page cache (warm).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "logs" / "cpu"
# The figure before the gates were searched in one pass (README's Measured table, 2026-11-23:
# one bytes.find pass per runtime gate), printed beside today's rate.
BEFORE_MB_S = 153
# Lines read in full (a startup, an open traceback): every regex used to cost its own check per
# line; 35,700 lines per CPU-second on the corpus below, measured 2026-12-04 before issue 22.
BEFORE_FULL_LINES_PER_CPU_S = 35_700
CORPUS = [*sorted((REPO / "tests" / "fixtures" / "logs").rglob("*.log")),
          REPO / "tests" / "fixtures" / "capacity" / "kv-too-small.log"]


def _startup_and_crash() -> tuple[list[str], list[str]]:
    real = (FIXTURES / "pass-real.log").read_text(encoding="utf-8").splitlines(keepends=True)
    ready = next(i for i, line in enumerate(real) if "Application startup complete" in line)
    crash = (FIXTURES / "false-ready-hd40.log").read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(crash) if "WorkerProc hit an exception" in line)
    end = next(i for i, line in enumerate(crash) if "EngineDeadError" in line)
    return real[: ready + 1], crash[start: end + 1]


def _serving_block(n_lines: int) -> str:
    prompt = "the model runs on an ascend npu with vllm and answers every request quickly " * 6
    out = []
    for i in range(n_lines):
        k = i % 10
        if k < 5:
            out.append(f'INFO:     127.0.0.1:{40000 + i % 20000} - "POST /v1/chat/completions HTTP/1.1" 200 OK\n')
        elif k < 7:
            out.append(f"(APIServer pid=3751) INFO 11-21 21:{i % 60:02d}:{i % 60:02d} [loggers.py:335] Engine 000: "
                       f"Avg prompt throughput: {i % 977 / 10:.1f} tokens/s, Avg generation throughput: "
                       f"{i % 513 / 10:.1f} tokens/s, Running: {i % 4} reqs, Waiting: 0 reqs, CPU KV cache usage: "
                       f"{i % 100 / 10:.1f}%, Prefix cache hit rate: 0.0%\n")
        elif k < 9:
            out.append(f"(APIServer pid=3751) INFO 11-21 21:12:53 [logger.py:41] Received request chatcmpl-{i:08x}: "
                       f"prompt: '<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n', "
                       f"params: SamplingParams(n=1, temperature=0.0, max_tokens=16), lora_request: None.\n")
        elif i % 1000 == 9:
            out.append("(EngineCore pid=3776) INFO 11-21 21:12:53 [scheduler.py:612] Preempting request to free "
                       "KV cache blocks for running requests.\n")
        else:
            out.append(f"(APIServer pid=3751) INFO 11-21 21:12:53 [async_llm.py:400] Added request chatcmpl-{i:08x}.\n")
    return "".join(out)


def generate(path: Path, size_mb: int) -> int:
    """Write the log; return the line number of the crash's first exception line."""
    startup, crash = _startup_and_crash()
    block = _serving_block(40_000).encode()
    block_lines = block.count(b"\n")
    target = size_mb << 20
    lines = 0
    with open(path, "wb") as fh:
        head = "".join(startup).encode()
        fh.write(head)
        lines += head.count(b"\n")
        written = len(head)
        while written < target:
            fh.write(block)
            written += len(block)
            lines += block_lines
        tail = "".join(crash)
        root = next(i for i, line in enumerate(crash) if line.split("] ", 1)[-1].startswith("RuntimeError:"))
        fh.write(tail.encode())
    return lines + root + 1


def scan_child(path: str) -> None:
    from helpers.catalog import load_catalog
    from helpers.diagnosis import diagnose
    from helpers.multifind import multi_find

    engine = multi_find(load_catalog().runtime_gates).engine
    t0, c0 = time.perf_counter(), time.process_time()
    diag = diagnose(path)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "verdict": diag.verdict, "category": diag.category,
                      "root_cause_line": diag.root_cause_line, "lines": diag.lines, "engine": engine}))


def full_mode_rate(rounds: int = 5) -> float:
    """Lines per CPU-second over the real-log corpus, read in full (best of three)."""
    from helpers.logscan import load_catalog, scan_file

    load_catalog()
    best = float("inf")
    for _ in range(3):
        c0, lines = time.process_time(), 0
        for _ in range(rounds):
            lines += sum(scan_file(path).line_no for path in CORPUS)
        best = min(best, time.process_time() - c0)
    return lines / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--path", default="/tmp/bench-vllm.log")
    parser.add_argument("--keep", action="store_true", help="keep the generated log")
    parser.add_argument("--scan-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scan_child:
        scan_child(args.scan_child)
        return 0
    path = Path(args.path)
    t0 = time.perf_counter()
    expected_root = generate(path, args.size_mb)
    size = path.stat().st_size
    print(f"generated {size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s: {path}")
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, __file__, "--scan-child", str(path)], env=env, check=True,
                             capture_output=True, text=True).stdout
        result = json.loads(out)
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        speed = size / 1e6 / result["seconds"]
        ok = result["verdict"] == "FAIL" and result["root_cause_line"] == expected_root
        print(f"scanned {result['lines']} lines in {result['seconds']:.2f} s: {speed:.0f} MB/s wall, "
              f"{size / 1e6 / result['cpu_seconds']:.0f} MB per CPU second, max RSS {rss_mb:.0f} MB "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        print(f"log scan rate: {speed:.0f} MB/s now (gates searched with {result['engine']}) "
              f"against {BEFORE_MB_S} MB/s before; target >= 500 MB/s")
        print(f"lines read in full (startups, tracebacks; the real-log corpus): {full_mode_rate():,.0f} per CPU "
              f"second now against {BEFORE_FULL_LINES_PER_CPU_S:,} before")
        print(f"diagnosis: {result['verdict']} {result['category']} root cause line {result['root_cause_line']} "
              f"(expected {expected_root}): {'correct' if ok else 'WRONG'}")
        return 0 if ok else 1
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
