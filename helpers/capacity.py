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

import hashlib
import json
import re
import shutil
import subprocess
import time
from typing import Any, Callable

from helpers import evidence as ev
from helpers import loadgen, profiles, runs
from helpers.errors import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS, Interrupted, UsageError
from helpers.lifecycle import SignalGuard
from helpers.model import Model
from helpers.plan import Variant
from helpers.settings import Settings
from helpers.capacity_cell import CellRun, cell_key
from helpers.stage import StageRequest
from helpers.templating import render
from helpers.timeline.charts import CAPACITY_PNG, ChartsUnavailable, draw_capacity

FINISHED = ("PASS", "FAIL")  # an INTERRUPTED cell is not finished: it runs again
DEFAULT_SEARCH_STARTS = 6
TEMPLATE = "capacity.md.j2"

# --- inputs ------------------------------------------------------------------------------------
def sweep_cells(sweep: list[int] | str | None, profile: profiles.Profile) -> list[int]:
    """The max-num-seqs cells: SWEEP's own list; empty = the profile's baseline; "max" = its sweep_max."""
    if isinstance(sweep, list):
        return sweep
    if sweep == "max":
        values = profile.capacity.get("sweep_max") or profile.capacity.get("sweep") or [16]
    else:
        values = profile.capacity.get("sweep") or [16]
    return list(dict.fromkeys(int(v) for v in values))


def theoretical_max_len(model: Model) -> int | None:
    value = model.facts.max_position_embeddings
    return value if isinstance(value, int) and value > 0 else None


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


# --- the sweep ---------------------------------------------------------------------------------
class _Stop(Exception):
    pass


class CapacitySweep:
    def __init__(self, settings: Settings, model: Model, out: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.model = model
        self.out = out or (lambda line: print(line, flush=True))
        self.profile = profiles.load(settings.backend)
        self.model_name = model.name
        self.theoretical = theoretical_max_len(model)
        block = self.profile.capacity
        self.sweep = sweep_cells(settings.sweep, self.profile)
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
        self.force = settings.force
        # Serve like the documented command (its feature flags/env), unless SERVE_AS=base.
        self.serve_from = runs.documented_run(model.runs_dir) if settings.serve_as == "documented" else None
        self.variant = Variant.of_record(self.serve_from.data) if self.serve_from else Variant()
        self.client = self._choose_client()
        self.signature = self._signature()
        self.model_dir = model.runs_dir
        self.cells: list[dict[str, Any]] = []
        self.finished = {} if self.force else self._finished_cells()
        self.practical: int | None = None
        self.practical_source: str | None = None
        self.tokenizer: Any = None
        self._tokenizer_loaded = False
        self.t0 = time.monotonic()
        self.interrupted = False
        self.cells_only = False  # a run of a parallel set: its cells' cell.json only (helpers/starts/cellset.py)
        self.at_once: set[str] = set()  # keys of the cells this sweep ran in a parallel set

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
        parts = {"backend": self.profile.name, "model_path": str(self.model.checkpoint), "stage": self.settings.stage,
                 "tp": self.settings.tp, "dtype": self.settings.dtype, "extra_args": self.settings.extra_args,
                 "output_len": self.output_len, "client": self.client,
                 "variant": {"flags": self.variant.flags, "env": self.variant.env}}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]

    def _finished_cells(self) -> dict[str, dict[str, Any]]:
        """Finished cells of earlier runs with the same signature, newest per key (cell.json is the
        source of truth; capacity.json is a view of them)."""
        found: dict[str, dict[str, Any]] = {}
        for _run_dir, cell in ev.iter_evidence(self.model_dir, "cell.json"):
            if cell.get("signature") == self.signature and cell.get("verdict") in FINISHED:
                found[cell["key"]] = cell
        return found

    # ----------------------------------------------------------------- running cells
    def _get_tokenizer(self) -> Any:
        if not self._tokenizer_loaded:
            self._tokenizer_loaded = True
            if self.client == "builtin":
                self.tokenizer = loadgen.load_tokenizer(self.model.checkpoint,
                                                        "--trust-remote-code" in self.profile.flags)
        return self.tokenizer

    def cell(self, max_num_seqs: int, max_model_len: int, role: str, index: int, total: int) -> dict[str, Any]:
        key = cell_key(max_num_seqs, max_model_len)
        if key in self.finished:
            cell = dict(self.finished[key], role=role, reused=key not in self.at_once)
            self.out(f"[capacity] cell {key}: ran in the parallel set ({cell['verdict']}); evidence: {cell['run_dir']}"
                     if key in self.at_once else f"[capacity] cell {key}: finished earlier ({cell['verdict']}), "
                     f"skipped (FORCE=1 redoes it); evidence: {cell['run_dir']}")
            self._record(cell)
            return cell
        label = (f"capacity cell {index}/{total} max-num-seqs {max_num_seqs} max-model-len {max_model_len}"
                 if role == "sweep" else f"capacity practical-length check max-model-len {max_model_len}")
        request = StageRequest(step=f"capacity-{key}", stage=self.settings.stage, variant=self.variant,
                               make_target="capacity")
        run = CellRun(self.settings, self.model, request, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                      output_len=self.output_len, client=self.client, tokenizer=self._get_tokenizer(),
                      label=label, out=self.out)
        if role == "sweep" and index == 1:  # the baseline: `make serve` may already serve exactly it
            from helpers.starts.live import shared_for

            run.shared = shared_for(self.settings, self.model, run.plan, "capacity", self.out)
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
        self.profile.check_installed()
        self.out(f"[capacity] {self.model_name}: max-num-seqs {' '.join(map(str, self.sweep))} at "
                 f"max-model-len {self.target_len} (theoretical {self.theoretical}), {self.output_len} output "
                 f"tokens per request, client {self.client}; results: {self.model_dir / 'capacity.json'}")
        if self.serve_from is not None:
            self.out(f"[capacity] serving like the documented run {self.serve_from.run_dir} "
                     f"(variant {self.variant.name}: {' '.join(self.variant.flags) or 'no extra flags'})")
        if self.length_note:
            self.out(f"[capacity] note: {self.length_note}")
        baseline: dict[str, Any] | None = None
        pending = [n for n in self.sweep if cell_key(n, self.target_len) not in self.finished]
        if len(pending) > 1 and not self.cells_only:  # independent cells: at once on disjoint NPU groups
            from helpers.starts.cellset import run_at_once

            done, self.interrupted = run_at_once(self, pending)
            self.finished.update(done)
            self.at_once = set(done)
        with SignalGuard():
            try:
                length = self.target_len
                for index, n in enumerate(self.sweep):
                    if self.interrupted:
                        break
                    cell = self.cell(n, length, "sweep", index + 1, len(self.sweep))
                    baseline = baseline or cell
                    if self.cells_only:
                        continue
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
        if not self.cells_only:  # a run of a parallel set: the sweep that started it sums up
            self.out(self.summary_line())
            self.out(self.chart_line())
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_PASS if baseline is not None and baseline.get("verdict") == "PASS" else EXIT_FAIL

    # ----------------------------------------------------------------- output
    def document(self) -> dict[str, Any]:
        args = (self.cells, self.theoretical, self.practical, self.practical_source)
        return {
            "schema": 1,
            "model": self.model_name,
            "model_path": str(self.model.checkpoint),
            "backend": self.profile.name,
            "generated_at": ev.utc_iso(),
            "status": "interrupted" if self.interrupted else "done",
            "signature": self.signature,
            "tested_max_model_len": self.target_len,
            "serve_from": self.serve_from.as_source() if self.serve_from else None,
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
        if self.cells_only:
            return  # the sweep that started this run writes capacity.json
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


    def chart_line(self) -> str:
        """capacity.png beside capacity.json (one point per measured cell); one line either way."""
        try:
            path = draw_capacity(self.document(), self.model_dir / CAPACITY_PNG)
        except ChartsUnavailable as exc:
            return f"  chart: not drawn: {exc}"
        return f"  chart: {path}"


def render_markdown(doc: dict[str, Any]) -> str:
    return render(TEMPLATE, doc=doc)
