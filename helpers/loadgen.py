"""Load for a capacity cell: prompts sized from the tested context, a concurrent streaming
client, `vllm bench serve` where the `vllm` CLI works, /metrics sampling, and the metrics.

Metric names and definitions follow `vllm bench serve` (vllm/benchmarks/serve.py) so numbers
compare with upstream: TTFT = time to the first streamed token chunk; ITL = gaps between
successive chunks; E2EL = request start to the last chunk; TPOT = (E2EL - TTFT) / (output
tokens - 1), i.e. excluding the first token, only for requests with more than one output token;
throughputs divide by the wall-clock duration of the whole load; percentiles interpolate
linearly between closest ranks (numpy.percentile's default).
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import requests

from helpers.readiness import auth_headers

PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (50.0, 99.0)
# Without a tokenizer a prompt is made of words; English text runs at about 1.3 tokens per word,
# so 0.6 words per token stays below the tested length (the server reports the true count).
WORDS_PER_TOKEN = 0.6
_WORDS = ("capacity load prompt token model serve ascend npu graph cache memory request stream "
          "engine worker batch sequence length context window report runbook evidence metric "
          "latency throughput queue prefill decode attention layer expert tensor parallel").split()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


# ----------------------------------------------------------------------------- per request
@dataclass
class RequestTiming:
    """One request as `vllm bench serve` records it (seconds; start_time from perf_counter)."""

    success: bool = False
    start_time: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    output_tokens: int = 0
    prompt_len: int = 0
    error: str = ""
    status: int | None = None
    request_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- metrics (pure)
def percentile(values: list[float], p: float) -> float:
    """numpy.percentile(values, p) with the default linear method, without numpy."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _std(values: list[float]) -> float:
    if not values:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _p_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def compute_metrics(outputs: list[RequestTiming], duration: float,
                    percentiles: Iterable[float] = PERCENTILES) -> dict[str, Any]:
    """The `vllm bench serve` result keys from per-request timings and the load's duration."""
    ttfts: list[float] = []
    tpots: list[float] = []
    itls: list[float] = []
    e2els: list[float] = []
    total_input = total_output = completed = 0
    for out in outputs:
        if not out.success:
            continue
        output_len = out.output_tokens or 1  # vLLM counts 1 when the server sent no usage
        total_input += out.prompt_len
        total_output += output_len
        if output_len > 1:
            tpots.append((out.latency - out.ttft) / (output_len - 1))
        itls += out.itl
        ttfts.append(out.ttft)
        e2els.append(out.latency)
        completed += 1
    duration = duration if duration > 0 else float("nan")
    result: dict[str, Any] = {
        "duration": duration,
        "completed": completed,
        "failed": sum(1 for out in outputs if not out.success),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": completed / duration,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
    }
    series = {"ttft": ttfts, "tpot": tpots, "itl": itls, "e2el": e2els}
    for name in PERCENTILE_METRICS:
        values = series[name]
        result[f"mean_{name}_ms"] = _mean(values) * 1000
        result[f"median_{name}_ms"] = percentile(values, 50) * 1000
        result[f"std_{name}_ms"] = _std(values) * 1000
        for p in percentiles:
            result[f"p{_p_word(p)}_{name}_ms"] = percentile(values, p) * 1000
    return result


def timings_from_bench_result(result: dict[str, Any]) -> list[RequestTiming]:
    """Per-request timings from a `vllm bench serve --save-detailed` JSON."""
    count = len(result.get("ttfts") or [])
    errors = result.get("errors") or [""] * count
    timings = []
    for index in range(count):
        error = errors[index] if index < len(errors) else ""
        timings.append(RequestTiming(
            success=not error, start_time=(result.get("start_times") or [0.0] * count)[index],
            ttft=result["ttfts"][index] or 0.0, itl=list((result.get("itls") or [[]] * count)[index] or []),
            latency=(result.get("latencies") or [0.0] * count)[index] or 0.0,
            output_tokens=(result.get("output_lens") or [0] * count)[index] or 0,
            prompt_len=(result.get("input_lens") or [0] * count)[index] or 0, error=error or ""))
    return timings


# ----------------------------------------------------------------------------- prompts
@dataclass
class Prompts:
    items: list[Any]  # list of token-id lists (exact) or strings (estimated)
    sizing: str       # "tokenizer" | "estimate"
    input_len: int


def load_tokenizer(model_path: Path, trust_remote_code: bool = False):
    """The checkpoint's own tokenizer, from local files only; None when it cannot be loaded."""
    if not any((Path(model_path) / name).is_file() for name in TOKENIZER_FILES):
        return None  # no tokenizer files: do not pay for importing transformers
    try:
        from transformers import AutoTokenizer  # noqa: PLC0415 - heavy, optional
    except Exception:  # noqa: BLE001 - transformers absent or broken: fall back to an estimate
        return None
    try:
        return AutoTokenizer.from_pretrained(str(model_path), local_files_only=True,
                                             trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - any loader failure means "no tokenizer", not a crash
        return None


def make_prompts(count: int, input_len: int, tokenizer=None, seed: int = 0) -> Prompts:
    """`count` distinct prompts of `input_len` tokens. With a tokenizer, token ids (exact length,
    sent as the prompt); without, words at WORDS_PER_TOKEN. Each prompt starts differently so
    prefix caching cannot share their KV cache."""
    rng = random.Random(seed)
    if tokenizer is not None:
        words = [rng.choice(_WORDS) for _ in range(int(input_len * 1.2) + 64)]
        base = list(tokenizer.encode(" ".join(words), add_special_tokens=False))
        while len(base) < input_len + count:
            base += base
        items = []
        for index in range(count):
            offset = (index * 7919) % len(base)
            rotated = base[offset:] + base[:offset]
            tag = list(tokenizer.encode(f"{index} ", add_special_tokens=False))
            items.append((tag + rotated)[:input_len])
        return Prompts(items, "tokenizer", input_len)
    word_count = max(1, int(input_len * WORDS_PER_TOKEN))
    items = []
    for index in range(count):
        local = random.Random(seed * 100003 + index)
        items.append(f"{index} " + " ".join(local.choice(_WORDS) for _ in range(word_count - 1)))
    return Prompts(items, "estimate", input_len)


# ----------------------------------------------------------------------------- the client
def stream_completion(url: str, served_name: str, prompt: Any, output_len: int, *, api_key: str = "",
                      timeout: float = 600, request_id: str = "") -> RequestTiming:
    """One streaming /v1/completions request timed like vLLM's benchmark client: fixed output
    length (ignore_eos + min_tokens), usage from the final chunk."""
    payload = {"model": served_name, "prompt": prompt, "max_tokens": output_len, "min_tokens": output_len,
               "ignore_eos": True, "temperature": 0, "stream": True,
               "stream_options": {"include_usage": True}}
    request_id = request_id or f"bringup-capacity-{uuid.uuid4().hex[:12]}"
    out = RequestTiming(request_id=request_id, prompt_len=len(prompt) if isinstance(prompt, list) else 0)
    headers = {"X-Request-Id": request_id, **auth_headers(api_key)}
    started = time.perf_counter()
    out.start_time = started
    last = started
    first = False
    try:
        with requests.post(f"{url}/v1/completions", json=payload, headers=headers, timeout=timeout,
                           stream=True) as response:
            out.status = response.status_code
            if response.status_code != 200:
                out.error = f"HTTP {response.status_code}: {response.text[:300]}"
                return out
            for raw in response.iter_lines(decode_unicode=True):
                if not raw or raw.startswith(":"):
                    continue
                data = raw.removeprefix("data:").strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if isinstance(event, dict) and event.get("error"):
                    error = event["error"]
                    out.error = "in-stream error: " + (error.get("message", str(error)) if isinstance(error, dict)
                                                       else str(error))
                    return out
                if event.get("choices"):
                    now = time.perf_counter()
                    if not first:
                        first = True
                        out.ttft = now - started
                    else:
                        out.itl.append(now - last)
                    last = now
                elif event.get("usage"):
                    usage = event["usage"]
                    out.output_tokens = usage.get("completion_tokens") or 0
                    if usage.get("prompt_tokens") is not None:
                        out.prompt_len = usage["prompt_tokens"]
            out.latency = last - started
            out.success = first
            if not first:
                out.error = "no token chunk received"
    except requests.RequestException as exc:
        out.error = f"connection failed: {exc.__class__.__name__}: {str(exc)[:200]}"
    except ValueError as exc:
        out.error = f"unparsable stream event: {exc}"
    return out


class BuiltinLoad:
    """`count` requests, at most `concurrency` in flight, in daemon threads; the caller polls."""

    def __init__(self, url: str, served_name: str, prompts: Prompts, output_len: int, concurrency: int,
                 *, api_key: str = "", timeout: float = 600) -> None:
        self.url, self.served_name, self.prompts = url, served_name, prompts
        self.output_len, self.concurrency = output_len, concurrency
        self.api_key, self.timeout = api_key, timeout
        self.results: list[RequestTiming | None] = [None] * len(prompts.items)
        self.started_at = 0.0
        self.finished_at = 0.0
        self._next = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def done(self) -> int:
        return sum(1 for r in self.results if r is not None)

    def _worker(self) -> None:
        while True:
            with self._lock:
                index = self._next
                if index >= self.total:
                    return
                self._next += 1
            self.results[index] = stream_completion(
                self.url, self.served_name, self.prompts.items[index], self.output_len, api_key=self.api_key,
                timeout=self.timeout, request_id=f"bringup-capacity-{index}-{uuid.uuid4().hex[:8]}")
            with self._lock:
                if self.done == self.total:
                    self.finished_at = time.perf_counter()

    def start(self) -> None:
        self.started_at = time.perf_counter()
        for _ in range(min(self.concurrency, self.total)):
            thread = threading.Thread(target=self._worker, daemon=True)
            thread.start()
            self._threads.append(thread)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def duration(self) -> float:
        end = self.finished_at or time.perf_counter()
        return end - self.started_at

    def timings(self, unfinished_error: str = "not finished") -> list[RequestTiming]:
        return [r if r is not None else RequestTiming(error=unfinished_error) for r in self.results]


# ----------------------------------------------------------------------------- vllm bench serve
def bench_serve_argv(*, url: str, model_path: str, served_name: str, input_len: int, output_len: int,
                     num_prompts: int, concurrency: int, result_dir: str, result_filename: str,
                     trust_remote_code: bool = False, ready_check_timeout: int = 60,
                     vllm: str = "vllm") -> list[str]:
    argv = [vllm, "bench", "serve", "--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", model_path, "--served-model-name", served_name, "--tokenizer", model_path,
            "--dataset-name", "random", "--random-input-len", str(input_len),
            "--random-output-len", str(output_len), "--random-range-ratio", "0", "--ignore-eos",
            "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
            "--percentile-metrics", ",".join(PERCENTILE_METRICS),
            "--metric-percentiles", ",".join(_p_word(p) for p in PERCENTILES),
            "--save-result", "--save-detailed", "--result-dir", result_dir, "--result-filename", result_filename,
            "--ready-check-timeout-sec", str(ready_check_timeout)]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    return argv


# ----------------------------------------------------------------------------- /metrics
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # renamed in vLLM 0.10
PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")
SUCCESS = ("vllm:request_success_total",)


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text -> {metric name: value summed over its label sets} (engines, reasons)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        values[match.group(1)] = values.get(match.group(1), 0.0) + value
    return values


def _first(values: dict[str, float], names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in values:
            return values[name]
    return None


def server_sample(values: dict[str, float]) -> dict[str, float | None]:
    return {"running": _first(values, RUNNING), "waiting": _first(values, WAITING),
            "kv_cache_usage_perc": _first(values, KV_USAGE), "preemptions": _first(values, PREEMPTIONS),
            "success": _first(values, SUCCESS)}


def summarize_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """max running / waiting / KV cache usage over the load; preemptions = counter at the end
    (the server started fresh for the cell, so the counter is this cell's)."""
    def top(key: str) -> float | None:
        seen = [s[key] for s in samples if s.get(key) is not None]
        return max(seen) if seen else None

    return {"samples": len(samples), "max_running": top("running"), "max_waiting": top("waiting"),
            "max_kv_cache_usage_perc": top("kv_cache_usage_perc"), "preemptions": top("preemptions")}


def fetch_metrics_text(url: str, timeout: float = 1.0, api_key: str = "") -> str | None:
    """The raw Prometheus text of GET /metrics, None when the server does not answer."""
    try:
        response = requests.get(f"{url}/metrics", timeout=timeout, headers=auth_headers(api_key))
    except requests.RequestException:
        return None
    return response.text if response.status_code == 200 else None
