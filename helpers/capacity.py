"""`make capacity`: does the model serve the baseline (max-model-len x max-num-seqs), how far
does it go (SWEEP), and what are the theoretical and the practical max lengths.

One server start per cell (max_num_seqs, max_model_len), each a StageRun whose requests are a
concurrent load of long prompts with a fixed output length. Each cell writes cell.json in its
own run dir and capacity.json/capacity.md under RUNS_DIR/<model>/ as soon as it ends, so a crash
keeps what was done; finished cells are reused unless FORCE=1. When a start fails because the
KV cache cannot hold one request of the tested length, vLLM's own estimate of the longest length
is confirmed with one more start (bisection only when vLLM printed no estimate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any, Callable

import jinja2

from helpers import evidence as ev
from helpers import loadgen, profiles
from helpers.errors import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS, Interrupted, UsageError
from helpers.readiness import Progress
from helpers.settings import REPO_ROOT, Settings
from helpers.smoke import RequestResult
from helpers.stage import SignalGuard, StageRequest, StageRun, check_backend_installed
from helpers.checkpoint import config_facts
from helpers.triage import read_config, resolve_model

SAMPLE_SECONDS = 1.0
AFTER_DEATH_GRACE = 2.0
FINISHED = ("PASS", "FAIL")  # an INTERRUPTED cell is not finished: it runs again
DEFAULT_SEARCH_STARTS = 6
TEMPLATE = "capacity.md.j2"

# --- log facts ---------------------------------------------------------------------------------
_FACT_KEYS = ("kv_cache_tokens", "max_concurrency", "estimated_max_model_len")


def log_facts(evidence: dict[str, Any], hits: list[dict[str, Any]]) -> dict[str, Any]:
    """KV cache tokens, max concurrency, vLLM's estimated max length (scanner evidence), and
    whether (and on which serve.log line) the start was refused because the KV cache cannot
    hold one request (the scanner's kv-too-small hits)."""
    facts: dict[str, Any] = {key: evidence.get(key) for key in _FACT_KEYS}
    kv_hit = next((h for h in hits if h.get("category") == "kv-too-small"), None)
    facts["kv_line"] = {"line_no": kv_hit["line_no"], "text": kv_hit["text"]} if kv_hit else None
    facts["kv_too_small"] = kv_hit is not None or facts["estimated_max_model_len"] is not None
    return facts


# --- inputs ------------------------------------------------------------------------------------
def parse_sweep(text: str, profile: profiles.Profile) -> list[int]:
    """SWEEP="16 32 64" (spaces or commas); empty = the profile's baseline; "max" = its sweep_max."""
    text = (text or "").strip()
    if not text:
        values = profile.capacity.get("sweep") or [16]
    elif text.lower() in ("max", "all"):
        values = profile.capacity.get("sweep_max") or profile.capacity.get("sweep") or [16]
    else:
        parts = [p for p in re.split(r"[\s,]+", text) if p]
        if not all(re.fullmatch(r"\d+", p) and int(p) > 0 for p in parts):
            raise UsageError(f"SWEEP={text!r} is not a list of max-num-seqs values",
                             'use e.g. SWEEP="16 32 64" or SWEEP=max')
        values = [int(p) for p in parts]
    seen: list[int] = []
    for value in values:
        if int(value) not in seen:
            seen.append(int(value))
    return seen


def theoretical_max_len(config: dict[str, Any]) -> int | None:
    value = config_facts(config).max_position_embeddings
    return value if isinstance(value, int) and value > 0 else None


def cell_key(max_num_seqs: int, max_model_len: int) -> str:
    return f"s{max_num_seqs}-l{max_model_len}"


# --- headline ----------------------------------------------------------------------------------
def _cell_phrase(cell: dict[str, Any], first_pass: bool) -> str:
    n, length = cell["max_num_seqs"], cell["max_model_len"]
    verdict = cell.get("verdict")
    if verdict == "PASS":
        text = (f"serves {n} concurrent requests at {length} tokens" if first_pass else f"{n} at {length}")
        conc = cell.get("max_concurrency")
        if conc is not None and conc < n:
            text += f" (KV cache holds {conc:.1f} full-length requests; the rest queued)"
        return text
    if verdict in ("NOT_RUN", "INTERRUPTED"):
        return f"{n} at {length} {'not run' if verdict == 'NOT_RUN' else 'interrupted'}"
    return f"fails with {n} at {length} ({cell.get('category') or verdict or 'unknown'})"


def headline_cells(cells: list[dict[str, Any]], practical: int | None) -> list[dict[str, Any]]:
    """The sweep cells, plus the start that confirmed the practical length."""
    return [c for c in cells if c.get("role", "sweep") == "sweep"
            or (c.get("verdict") == "PASS" and c.get("max_model_len") == practical)]


def headline(cells: list[dict[str, Any]], theoretical: int | None, practical: int | None,
             practical_source: str | None) -> str:
    """One plain sentence: what serves, what fails, and the two max lengths."""
    parts, served = [], False
    for cell in headline_cells(cells, practical):
        parts.append(_cell_phrase(cell, not served))
        served = served or cell.get("verdict") == "PASS"
    text = "; ".join(parts) if parts else "no cell ran"
    if practical is None:
        length = f"practical max length unknown of theoretical {theoretical or 'unknown'}"
    else:
        how = {"baseline-start": "the tested length started and served",
               "vllm-estimate-confirmed": "vLLM's estimate, confirmed by a start",
               "bisection": "found by bisection"}.get(practical_source or "", practical_source or "")
        length = f"practical max length {practical} of theoretical {theoretical or 'unknown'} ({how})"
    return f"{text}; {length}"


def headline_zh(cells: list[dict[str, Any]], theoretical: int | None, practical: int | None,
                practical_source: str | None) -> str:
    parts = []
    for cell in headline_cells(cells, practical):
        n, length, verdict = cell["max_num_seqs"], cell["max_model_len"], cell.get("verdict")
        if verdict == "PASS":
            part = f"{n} 并发 @ {length} tokens 通过"
            conc = cell.get("max_concurrency")
            if conc is not None and conc < n:
                part += f"（KV cache 仅容纳 {conc:.1f} 个满长请求，其余排队）"
        elif verdict in ("NOT_RUN", "INTERRUPTED"):
            part = f"{n} 并发 @ {length} {'未运行' if verdict == 'NOT_RUN' else '被中断'}"
        else:
            part = f"{n} 并发 @ {length} 失败（{cell.get('category') or verdict}）"
        parts.append(part)
    how = {"baseline-start": "基线长度启动并服务成功", "vllm-estimate-confirmed": "vLLM 估计值，已启动确认",
           "bisection": "二分查找"}.get(practical_source or "", "")
    length = (f"实际最大长度 {practical}（{how}），理论最大长度 {theoretical or '未知'}" if practical is not None
              else f"实际最大长度未知，理论最大长度 {theoretical or '未知'}")
    return "；".join(parts + [length])


# --- one cell ----------------------------------------------------------------------------------
class CellRun(StageRun):
    """A StageRun whose requests are the capacity load instead of the smoke requests."""

    request_phase = "capacity load"

    def __init__(self, settings: Settings, request: StageRequest, *, num_prompts: int, output_len: int,
                 client: str, tokenizer: Any, label: str, out: Callable[[str], None] | None = None) -> None:
        super().__init__(settings, request, out=out)
        self.num_prompts = num_prompts
        self.output_len = output_len
        self.client = client
        self.tokenizer = tokenizer
        self.label = label
        self.max_model_len = int(self.plan.argv[self.plan.argv.index("--max-model-len") + 1])
        self.max_num_seqs = int(self.plan.argv[self.plan.argv.index("--max-num-seqs") + 1])
        self.input_len = max(1, self.max_model_len - output_len)
        self.timings: list[loadgen.RequestTiming] = []
        self.load_duration = 0.0
        self.samples: list[dict[str, Any]] = []
        self.prompt_sizing = ""
        self.load_error = ""
        self.last_scrape = ""

    # the load, watched: process alive, no fatal line, /metrics sampled, progress shown
    def send_requests(self, url: str, ready_line: int) -> list[RequestResult]:
        assert self.run_dir is not None and self.server is not None
        progress = Progress(self.label)
        started = time.monotonic()
        if self.client == "vllm-bench":
            finished = self._bench_load(url, ready_line, progress, started)
        else:
            finished = self._builtin_load(url, ready_line, progress, started)
        progress.done()
        ev.atomic_write_json(self.run_dir / "metrics-samples.json", self.samples)
        if self.last_scrape:  # the raw Prometheus text of the last scrape, as the server wrote it
            ev.atomic_write_text(self.run_dir / "metrics.txt", self.last_scrape)
        results = []
        for timing in self.timings:
            result = RequestResult("load", timing.success, timing.status, timing.latency,
                                   "" if not timing.success else f"{timing.output_tokens} tokens",
                                   timing.error, timing.request_id,
                                   {"prompt_tokens": timing.prompt_len, "max_tokens": self.output_len})
            results.append(result)
            assert self.requests_log is not None
            self.requests_log.append({k: v for k, v in result.to_record().items()})
        done = sum(1 for t in self.timings if t.success)
        self.out(f"  load: {done}/{self.num_prompts} requests completed in {self.load_duration:.1f} s"
                 + ("" if finished else " (stopped early)"))
        return results

    def _sample(self, url: str, progress: Progress, started: float, done: int | None) -> None:
        text = loadgen.fetch_metrics_text(url, api_key=self.settings.api_key)
        sample: dict[str, Any] = {"t": round(time.monotonic() - started, 3)}
        if text is not None:
            self.last_scrape = text
            sample.update(loadgen.server_sample(loadgen.parse_prometheus(text)))
        self.samples.append(sample)
        if done is None and sample.get("success") is not None:
            done = int(sample["success"])
        detail = ""
        if sample.get("running") is not None:
            kv = sample.get("kv_cache_usage_perc")
            detail = (f"running {sample['running']:.0f}, waiting {sample.get('waiting') or 0:.0f}"
                      + (f", KV cache {kv * 100:.0f}%" if kv is not None else ""))
        shown = "?" if done is None else str(done)
        progress.update(time.monotonic() - started, f"requests {shown}/{self.num_prompts} done", detail)

    def _server_in_trouble(self, ready_line: int) -> bool:
        assert self.server is not None
        return self.server.poll() is not None or bool(self.scanner.failures(since_line=ready_line))

    def _builtin_load(self, url: str, ready_line: int, progress: Progress, started: float) -> bool:
        prompts = loadgen.make_prompts(self.num_prompts, self.input_len, self.tokenizer)
        self.prompt_sizing = prompts.sizing
        load = loadgen.BuiltinLoad(url, self.served_name, prompts, self.output_len, self.max_num_seqs,
                                   api_key=self.settings.api_key, timeout=self.settings.request_timeout)
        load.start()
        trouble_since: float | None = None
        next_sample = 0.0
        finished = True
        while load.alive():
            time.sleep(0.2)
            self._pump()
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + SAMPLE_SECONDS
                self._sample(url, progress, started, load.done)
            if self._server_in_trouble(ready_line):
                trouble_since = trouble_since or now
                if now - trouble_since > AFTER_DEATH_GRACE:
                    finished = False
                    break
        self.load_duration = load.duration()
        self.timings = load.timings("server died while the request was in flight")
        self._sample(url, progress, started, load.done)
        ev.atomic_write_json(self.run_dir / "load.json", {  # type: ignore[operator]
            "client": "builtin", "duration": self.load_duration, "input_len": self.input_len,
            "output_len": self.output_len, "num_prompts": self.num_prompts, "max_concurrency": self.max_num_seqs,
            "prompt_sizing": self.prompt_sizing, "requests": [t.to_dict() for t in self.timings]})
        return finished

    def _bench_load(self, url: str, ready_line: int, progress: Progress, started: float) -> bool:
        assert self.run_dir is not None
        self.prompt_sizing = "random-dataset"
        argv = loadgen.bench_serve_argv(
            url=url, model_path=str(self.model_path), served_name=self.served_name, input_len=self.input_len,
            output_len=self.output_len, num_prompts=self.num_prompts, concurrency=self.max_num_seqs,
            result_dir=str(self.run_dir), result_filename="bench-serve.json",
            trust_remote_code="--trust-remote-code" in self.plan.argv)
        env = dict(os.environ)
        if self.settings.api_key:
            env["OPENAI_API_KEY"] = self.settings.api_key
        ev.atomic_write_text(self.run_dir / "bench-command.txt", " ".join(argv) + "\n")
        with (self.run_dir / "bench.log").open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
        finished = True
        trouble_since: float | None = None
        next_sample = 0.0
        t0 = time.perf_counter()
        try:
            while process.poll() is None:
                time.sleep(0.2)
                self._pump()
                now = time.monotonic()
                if now >= next_sample:
                    next_sample = now + SAMPLE_SECONDS
                    self._sample(url, progress, started, None)
                if self._server_in_trouble(ready_line):
                    trouble_since = trouble_since or now
                    if now - trouble_since > AFTER_DEATH_GRACE:
                        finished = False
                        break
        finally:
            if process.poll() is None:  # our own child's group: stop it with the cell
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.load_duration = time.perf_counter() - t0
        result_path = self.run_dir / "bench-serve.json"
        if result_path.is_file():
            result = ev.read_json(result_path)
            self.timings = loadgen.timings_from_bench_result(result)
            self.load_duration = float(result.get("duration") or self.load_duration)
        else:
            self.load_error = f"vllm bench serve wrote no result (exit {process.returncode}); see bench.log"
            self.timings = [loadgen.RequestTiming(error=self.load_error)] * self.num_prompts
        return finished

    def _decide(self, outcome, results) -> None:  # type: ignore[override]
        super()._decide(outcome, results)
        rec = self.record
        if outcome.state != "ready":
            facts = log_facts(self.scanner.evidence, [h.to_dict() for h in self.scanner.hits])
            if facts["kv_too_small"]:
                rec["category"] = "kv-too-small"
                estimate = facts["estimated_max_model_len"]
                rec["reason"] = (f"the KV cache cannot hold one request of {self.max_model_len} tokens"
                                 + (f"; vLLM estimates the maximum model length at {estimate}" if estimate
                                    else "; vLLM printed no estimate"))
                if facts["kv_line"]:
                    rec["root_cause"] = {**facts["kv_line"], "exception": "ValueError", "proc": None,
                                         "sig_id": None, "category": "kv-too-small"}
            return
        completed = sum(1 for t in self.timings if t.success)
        if rec["verdict"] == "PASS" and completed < self.num_prompts:
            rec["verdict"], rec["category"] = "FAIL", "load-incomplete"
            rec["reason"] = f"only {completed} of {self.num_prompts} requests completed. {self.load_error}".strip()
        elif rec["verdict"] == "PASS":
            rec["reason"] = (f"ready, all {self.num_prompts} concurrent requests of {self.input_len}+"
                             f"{self.output_len} tokens completed, server alive, no fatal line")

    def cell_record(self, role: str, signature: str) -> dict[str, Any]:
        rec = self.record
        facts = log_facts(rec.get("log_evidence") or {}, rec.get("signatures") or [])
        metrics = loadgen.compute_metrics(self.timings, self.load_duration) if self.timings else {}
        failed_errors = [t.error for t in self.timings if not t.success][:5]
        return {
            "schema": 1,
            "key": cell_key(self.max_num_seqs, self.max_model_len),
            "signature": signature,
            "role": role,
            "max_num_seqs": self.max_num_seqs,
            "max_model_len": self.max_model_len,
            "input_len": self.input_len,
            "output_len": self.output_len,
            "num_prompts": self.num_prompts,
            "client": self.client,
            "prompt_sizing": self.prompt_sizing or None,
            "verdict": rec.get("verdict"),
            "category": rec.get("category"),
            "reason": rec.get("reason"),
            "root_cause": (rec.get("root_cause") or {}).get("text"),
            "run_dir": str(self.run_dir),
            "log": str(self.run_dir / "serve.log") if self.run_dir else None,
            "start_to_ready_s": (rec.get("timings") or {}).get("start_to_ready_s"),
            "kv_cache_tokens": facts["kv_cache_tokens"],
            "max_concurrency": facts["max_concurrency"],
            "estimated_max_model_len": facts["estimated_max_model_len"],
            "kv_too_small": facts["kv_too_small"],
            "completed": metrics.get("completed", 0),
            "failed": metrics.get("failed", 0) if self.timings else 0,
            "errors": failed_errors,
            "metrics": metrics,
            "server_metrics": loadgen.summarize_samples(self.samples),
            "started_at": rec.get("started_at"),
            "finished_at": rec.get("finished_at"),
        }


# --- the sweep ---------------------------------------------------------------------------------
class _Stop(Exception):
    pass


class CapacitySweep:
    def __init__(self, settings: Settings, out: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.out = out or (lambda line: print(line, flush=True))
        self.profile = profiles.load(settings.backend)
        self.model_path = resolve_model(settings)
        self.config = read_config(self.model_path)
        self.model_name = ev.safe_name(self.model_path.name)
        self.theoretical = theoretical_max_len(self.config)
        block = self.profile.capacity
        self.sweep = parse_sweep(settings.get("SWEEP"), self.profile)
        self.output_len = int(block.get("output_len") or 128)
        self.search_starts = int(block.get("search_starts") or DEFAULT_SEARCH_STARTS)
        self.length_note = ""
        if settings.max_model_len:
            self.target_len = settings.max_model_len
        else:
            self.target_len = int(block.get("max_model_len") or self.profile.defaults.get("max_model_len", 4096))
            if self.theoretical and self.target_len > self.theoretical:
                self.length_note = (f"the profile's baseline {self.target_len} is above the model's "
                                    f"max_position_embeddings {self.theoretical}; tested at {self.theoretical}")
                self.target_len = self.theoretical
        if self.target_len <= self.output_len:
            raise UsageError(f"MAX_MODEL_LEN={self.target_len} leaves no room for prompts of a load with "
                             f"{self.output_len} output tokens", "test a longer length")
        self.force = settings.get("FORCE", "").strip().lower() in ("1", "true", "yes", "on")
        self.client = self._choose_client()
        self.signature = self._signature()
        self.model_dir = ev.model_runs_dir(settings.runs_dir, self.model_name)
        self.cells: list[dict[str, Any]] = []
        self.finished = {} if self.force else self._finished_cells()
        self.practical: int | None = None
        self.practical_source: str | None = None
        self.tokenizer: Any = None
        self._tokenizer_loaded = False
        self.t0 = time.monotonic()
        self.interrupted = False

    def _choose_client(self) -> str:
        wanted = str(self.profile.capacity.get("load_client") or "builtin")
        if wanted != "vllm-bench":
            return "builtin"
        vllm = shutil.which("vllm")
        if vllm is None:
            return "builtin"
        try:
            probe = subprocess.run([vllm, "--version"], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return "builtin"
        return "vllm-bench" if probe.returncode == 0 else "builtin"

    def _signature(self) -> str:
        """What makes two cells comparable: a changed backend, flags or load invalidates reuse."""
        parts = {"backend": self.profile.name, "model_path": str(self.model_path), "stage": self.settings.stage,
                 "tp": self.settings.tp, "dtype": self.settings.dtype, "extra_args": self.settings.extra_args,
                 "output_len": self.output_len, "client": self.client}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]

    def _finished_cells(self) -> dict[str, dict[str, Any]]:
        """Finished cells of earlier runs with the same signature, newest per key (cell.json is the
        source of truth; capacity.json is a view of them)."""
        found: dict[str, dict[str, Any]] = {}
        if not self.model_dir.is_dir():
            return found
        for path in sorted(self.model_dir.glob("*-capacity-*/cell.json")):
            if path.parent.is_symlink():  # latest-* links point at run dirs listed anyway
                continue
            try:
                cell = ev.read_json(path)
            except (OSError, ValueError):
                continue
            if cell.get("signature") == self.signature and cell.get("verdict") in FINISHED:
                found[cell["key"]] = cell
        return found

    # ----------------------------------------------------------------- running cells
    def _get_tokenizer(self) -> Any:
        if not self._tokenizer_loaded:
            self._tokenizer_loaded = True
            if self.client == "builtin":
                self.tokenizer = loadgen.load_tokenizer(self.model_path,
                                                        "--trust-remote-code" in self.profile.flags)
        return self.tokenizer

    def cell(self, max_num_seqs: int, max_model_len: int, role: str, index: int, total: int) -> dict[str, Any]:
        key = cell_key(max_num_seqs, max_model_len)
        if key in self.finished:
            cell = dict(self.finished[key], role=role, reused=True)
            self.out(f"[capacity] cell {key}: finished earlier ({cell['verdict']}), skipped "
                     f"(FORCE=1 redoes it); evidence: {cell['run_dir']}")
            self._record(cell)
            return cell
        label = (f"capacity cell {index}/{total} max-num-seqs {max_num_seqs} max-model-len {max_model_len}"
                 if role == "sweep" else f"capacity practical-length check max-model-len {max_model_len}")
        settings = dataclasses.replace(self.settings, max_model_len=max_model_len, max_num_seqs=max_num_seqs)
        request = StageRequest(step=f"capacity-{key}", stage=self.settings.stage)
        run = CellRun(settings, request, num_prompts=max_num_seqs, output_len=self.output_len,
                      client=self.client, tokenizer=self._get_tokenizer(), label=label, out=self.out)
        self.out(f"[capacity] {label} ({time.monotonic() - self.t0:.0f} s into the sweep)")
        code = run.run()
        cell = run.cell_record(role, self.signature)
        assert run.run_dir is not None
        ev.atomic_write_json(run.run_dir / "cell.json", cell)
        self._record(cell)
        if code == EXIT_INTERRUPTED:
            self.interrupted = True
            raise _Stop()
        if cell["verdict"] in FINISHED:
            self.finished[key] = cell
        return cell

    def _record(self, cell: dict[str, Any]) -> None:
        self.cells = [c for c in self.cells if c["key"] != cell["key"]] + [cell]
        self.write()

    def _not_run(self, max_num_seqs: int, max_model_len: int, why: str) -> None:
        self.cells.append({"key": cell_key(max_num_seqs, max_model_len), "role": "sweep",
                           "max_num_seqs": max_num_seqs, "max_model_len": max_model_len, "verdict": "NOT_RUN",
                           "category": None, "reason": why, "run_dir": None, "kv_cache_tokens": None,
                           "max_concurrency": None, "completed": 0, "failed": 0, "metrics": {},
                           "server_metrics": {}})

    def practical_search(self, max_num_seqs: int, failed_len: int, failed: dict[str, Any]) -> dict[str, Any] | None:
        """Confirm vLLM's estimate with one start; bisect only when no estimate is printed."""
        bad, good = failed_len, None
        good_cell: dict[str, Any] | None = None
        estimate = failed.get("estimated_max_model_len")
        source = "vllm-estimate-confirmed"
        granularity = max(16, failed_len // 64)
        for attempt in range(1, self.search_starts + 1):
            if estimate and estimate < bad and (good is None or estimate > good) and estimate > self.output_len:
                candidate, from_estimate = int(estimate), True
                self.out(f"[capacity] vLLM estimates the maximum model length at {candidate}; "
                         f"confirming with one start")
            else:
                low = good or 0
                if bad - low <= granularity:
                    break
                candidate, from_estimate = max(self.output_len + 1, (low + bad) // 2), False
                source = "bisection"
                self.out(f"[capacity] no usable estimate from vLLM; bisecting between {low} and {bad}: {candidate}")
            cell = self.cell(max_num_seqs, candidate, "practical-search", attempt, self.search_starts)
            if cell["verdict"] == "PASS":
                good, good_cell = candidate, cell
                if from_estimate:
                    break
                estimate = None
            elif cell.get("kv_too_small"):
                bad = candidate
                estimate = cell.get("estimated_max_model_len")
            else:
                break  # another kind of failure: a length search cannot explain it
        if good is not None:
            self.practical, self.practical_source = good, source
        return good_cell

    def run(self) -> int:
        check_backend_installed(self.profile)
        self.out(f"[capacity] {self.model_name}: max-num-seqs {' '.join(map(str, self.sweep))} at "
                 f"max-model-len {self.target_len} (theoretical {self.theoretical}), {self.output_len} output "
                 f"tokens per request, client {self.client}; results: {self.model_dir / 'capacity.json'}")
        if self.length_note:
            self.out(f"[capacity] note: {self.length_note}")
        baseline: dict[str, Any] | None = None
        with SignalGuard():
            try:
                length = self.target_len
                for index, n in enumerate(self.sweep):
                    cell = self.cell(n, length, "sweep", index + 1, len(self.sweep))
                    baseline = baseline or cell
                    if cell["verdict"] == "PASS":
                        if self.practical is None or length > self.practical:
                            self.practical, self.practical_source = length, "baseline-start"
                        continue
                    confirmed = None
                    if cell.get("kv_too_small") and self.practical is None:
                        confirmed = self.practical_search(n, length, cell)
                    if confirmed is not None and self.practical is not None:
                        length = self.practical  # the rest of the sweep runs at the practical length
                        continue
                    for later in self.sweep[index + 1:]:
                        self._not_run(later, length, f"stopped after {cell['key']} failed")
                    break
            except (_Stop, Interrupted):
                self.interrupted = True
            finally:
                self.write()
        self.out(self.summary_line())
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_PASS if baseline is not None and baseline.get("verdict") == "PASS" else EXIT_FAIL

    # ----------------------------------------------------------------- output
    def document(self) -> dict[str, Any]:
        args = (self.cells, self.theoretical, self.practical, self.practical_source)
        return {
            "schema": 1,
            "model": self.model_name,
            "model_path": str(self.model_path),
            "backend": self.profile.name,
            "generated_at": ev.utc_iso(),
            "status": "interrupted" if self.interrupted else "done",
            "signature": self.signature,
            "tested_max_model_len": self.target_len,
            "length_note": self.length_note or None,
            "sweep": self.sweep,
            "output_len": self.output_len,
            "client": self.client,
            "theoretical_max_len": self.theoretical,
            "practical_max_len": self.practical,
            "practical_source": self.practical_source,
            "headline": headline(*args),
            "headline_zh": headline_zh(*args),
            "cells": self.cells,
        }

    def write(self) -> None:
        doc = self.document()
        self.model_dir.mkdir(parents=True, exist_ok=True)
        target = self.model_dir / "capacity.json"
        if target.is_file():
            try:
                previous = ev.read_json(target)
            except (OSError, ValueError):
                previous = None
            if isinstance(previous, dict) and previous.get("signature") != self.signature:
                # results of another configuration are evidence too: keep them beside
                stamp = re.sub(r"[^0-9TZ]", "", str(previous.get("generated_at") or ev.utc_stamp()))
                target.rename(self.model_dir / f"capacity-{previous.get('signature')}-{stamp}.json")
        ev.atomic_write_json(target, doc)
        ev.atomic_write_text(self.model_dir / "capacity.md", render_markdown(doc))

    def summary_line(self) -> str:
        doc = self.document()
        state = "INTERRUPTED " if self.interrupted else ""
        return (f"{state}capacity {self.model_name}: {doc['headline']}\n"
                f"  results: {self.model_dir / 'capacity.json'} and capacity.md")


def render_markdown(doc: dict[str, Any]) -> str:
    # cells that did not run have no metrics: missing values render as "-"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(REPO_ROOT / "templates")),
                             undefined=jinja2.ChainableUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)

    def num(value: Any, digits: int = 1) -> str:
        if value is None or isinstance(value, jinja2.Undefined):
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    env.filters["num"] = num
    return env.get_template(TEMPLATE).render(doc=doc)
