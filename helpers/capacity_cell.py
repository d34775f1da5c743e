"""One capacity cell: a stage run whose requests are a concurrent load of long prompts with a
fixed output length (the builtin client or `vllm bench serve`), watched like any stage run, with
/metrics sampled during the load. Its cell.json is the source of truth of `make capacity`.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Callable

from helpers import evidence as ev
from helpers import loadgen
from helpers.model import Model
from helpers.readiness import Progress
from helpers.serve import stop_child_group
from helpers.settings import Settings
from helpers.smoke import RequestResult
from helpers.stage import StageRequest, StageRun

SAMPLE_SECONDS = 1.0
AFTER_DEATH_GRACE = 2.0
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


def cell_key(max_num_seqs: int, max_model_len: int) -> str:
    return f"s{max_num_seqs}-l{max_model_len}"


class CellRun(StageRun):
    """A StageRun whose requests are the capacity load instead of the smoke requests."""

    request_phase = "capacity load"

    def __init__(self, settings: Settings, model: Model, request: StageRequest, *, max_model_len: int,
                 max_num_seqs: int, output_len: int, client: str, tokenizer: Any, label: str,
                 out: Callable[[str], None] | None = None) -> None:
        super().__init__(settings, model, request, out=out, max_model_len=max_model_len, max_num_seqs=max_num_seqs)
        self.num_prompts = max_num_seqs
        self.output_len = output_len
        self.client = client
        self.tokenizer = tokenizer
        self.label = label
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.input_len = max(1, self.max_model_len - output_len)
        self.timings: list[loadgen.RequestTiming] = []
        self.load_duration = 0.0
        self.samples: list[dict[str, Any]] = []
        self.prompt_sizing = ""
        self.load_error = ""
        self.last_scrape = ""

    # the load, watched: process alive, no fatal line, /metrics sampled, progress shown
    def send_requests(self, url: str, ready_line: int) -> list[RequestResult]:
        assert self.run_dir is not None
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
        return self._server_gone() or bool(self.scanner.failures(since_line=ready_line))

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
            url=url, model_path=str(self.model.checkpoint), served_name=self.served_name, input_len=self.input_len,
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
            stop_child_group(process)  # our own child's group: it ends with the cell
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
            # a cell served by a shared live server (make serve) points at that server's log
            "log": str(self.run_dir / (rec.get("log") or "serve.log")) if self.run_dir else None,
            "shared_server": rec.get("shared_server"),
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
