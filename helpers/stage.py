"""One stage run: plan -> start -> watch -> smoke -> post-request scan -> stop -> evidence.

Stage A serves dummy weights (a fast gate), Stage B real weights (the gate that signs off);
feature gates and ladder rungs are stage runs with a Variant. Evidence is written as the run
goes, so an interrupted or crashed run still leaves a valid evidence.json.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from helpers import context as context_check
from helpers import layers, profiles
from helpers import evidence as ev
from helpers.errors import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS, Interrupted
from helpers.lifecycle import Session, SignalGuard, serving, sharing
from helpers.diagnosis import RunInputs, diagnosis_of
from helpers.logscan import LogScanner
from helpers import defaults, flashcomm_env
from helpers.model import Model
from helpers.plan import ServePlan, Variant, mask, plan_for
from helpers.readiness import Progress, WatchOutcome, base_url
from helpers.serve import ServerRecord, require_free_port
from helpers.settings import Settings
from helpers.smoke import RequestResult, chat, chat_stream
from helpers.stage_graph import GraphChecks
from helpers.timeline.phases import timeline_of_log

POLL_SECONDS = 0.2
AFTER_DEATH_GRACE = 2.0
LOG_SETTLE_SECONDS = 0.5


@dataclass
class StageRequest:
    """What to run: `step` names the run dir and the verdict; `stage` picks dummy vs real."""

    step: str
    stage: str
    variant: Variant = field(default_factory=Variant)
    multimodal: bool | None = None  # None: read from the checkpoint config
    make_target: str | None = None  # what reruns it (default: step); names the next command
    quiet_next: bool = False  # a ladder rung: the ladder prints one summary and one next step


class StageRun(GraphChecks):
    # What is sent once the server is ready; a capacity cell overrides send_requests with its load.
    request_phase = "smoke requests"

    def __init__(self, settings: Settings, model: Model, request: StageRequest,
                 out: Callable[[str], None] | None = None, *, max_model_len: int | None = None,
                 max_num_seqs: int | None = None) -> None:
        self.settings = settings
        self.model = model
        self.request = request
        self.out = out or (lambda line: print(line, flush=True))
        self.profile = profiles.load(settings.backend)
        self.multimodal = request.multimodal if request.multimodal is not None else model.multimodal
        # unset TP / MAX_MODEL_LEN: the profile's rule (triage's TP plan, the serve template)
        self.defaults = defaults.choose(settings, model, self.profile, self.out)
        if max_model_len:
            self.defaults["max_model_len"] = defaults.Chosen(max_model_len, f"{request.step} tests this length")
        self.plan: ServePlan = plan_for(self.profile, settings, model, request.stage, request.variant,
                                        max_model_len=self.defaults["max_model_len"].value,
                                        max_num_seqs=max_num_seqs, tp=self.defaults["tp"].value)
        self.first_request_line = 0
        self.warnings: list[str] = []
        self.flashcomm1_env = self._flashcomm1_env()
        self.secrets = [settings.api_key] if settings.api_key else []
        self.run_dir: Path | None = None
        self.record: dict[str, Any] = {}
        self.requests_log: ev.JsonLines | None = None
        self.session: Session | None = None
        self.scanner = LogScanner()
        self.t0 = time.monotonic()
        # A feature gate's own check of the finished record (its evidence in the log); runs
        # before the verdict is printed, so the one verdict line a user sees is the final one.
        self.post_check: Callable[["StageRun"], None] | None = None
        self.context: dict[str, Any] | None = None  # collected before the server starts (make context)
        # a live server of ours started with exactly this command serves this run (no start), and
        # `make serve` leaves the server it started running
        self.shared: ServerRecord | None = None
        self.keep_running = False

    def _flashcomm1_env(self) -> dict[str, Any] | None:
        """What the box's environment says about flashcomm1; a base run unsets what would turn it on."""
        if self.profile.family != "ascend":
            return None
        box = self.profile.facts_box()
        versions = box.versions(("vllm-ascend",))
        found = flashcomm_env.state(os.environ, {**versions, **box.builds(versions)}.get("vllm-ascend"),
                                    box.source_contains)
        note = flashcomm_env.baseline_note(found) if self.request.variant.name == "base" else ""
        if note:
            self.plan.unset_env += [name for name in found["on"] if name not in self.plan.unset_env]
            self.warnings.append(note)
            self.out(note)
        found["unset"] = bool(note)
        return found

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def served_name(self) -> str:
        return self.model.served_name

    # ------------------------------------------------------------------ evidence
    def _save(self) -> None:
        if self.run_dir is not None:
            text = mask(json.dumps(self.record, indent=2, ensure_ascii=False, default=str), self.secrets)
            ev.atomic_write_text(self.run_dir / "evidence.json", text + "\n")

    def _open_run(self) -> None:
        self.run_dir = ev.new_run_dir(self.settings.runs_dir, self.model_name, self.request.step)
        header = (f"Reproduces {self.run_dir} ({self.request.step}, stage {self.request.stage.upper()}, "
                  f"backend {self.profile.name}).\nWritten by the bring-up toolkit; runs the server in "
                  "the foreground, Ctrl-C stops it.")
        command_sh = self.run_dir / "command.sh"
        ev.atomic_write_text(command_sh, mask(self.plan.command_sh(header), self.secrets))
        command_sh.chmod(0o755)
        self.requests_log = ev.JsonLines(self.run_dir / "requests.jsonl")
        self.record = {
            "schema": 1,
            "status": "running",
            "step": self.request.step,
            "stage": self.request.stage,
            "feature": self.request.variant.name if self.request.variant.name != "base" else None,
            "model": self.model_name,
            "model_path": str(self.model.checkpoint),
            "served_name": self.served_name,
            "backend": self.profile.name,
            "multimodal": self.multimodal,
            "architectures": self.model.config.get("architectures"),
            "layers": self._layers().to_dict(),
            "variant": {"name": self.request.variant.name, "flags": self.request.variant.flags,
                        "env": self.request.variant.env},
            # where an unset TP / max-model-len came from (value None: the profile's plain default)
            "defaults": {name: chosen.to_dict() for name, chosen in self.defaults.items()},
            "warnings": self.warnings,
            "command": {"argv": self.plan.argv, "env": self.plan.env, "cwd": self.plan.cwd,
                        "shell": self.plan.shell_line(), "file": "command.sh"},
            "versions": self.profile.facts_box().versions(self.profile.versions),
            "flashcomm1_env": self.flashcomm1_env,
            "context": self.context,
            "started_at": ev.utc_iso(),
            "finished_at": None,
            "timings": {},
            "readiness": None,
            "requests": [],
            "graph": None,
            "verdict": None,
            "category": None,
            "reason": None,
            "root_cause": None,
            "signatures": [],
            "log_evidence": {},
            "log": "serve.log",
            "run_dir": str(self.run_dir),
        }
        self._save()

    def _layers(self) -> layers.LayerUse:
        """Full or reduced layers (an --hf-overrides in the argv, a trimmed checkpoint)."""
        config_layers = self.model.facts.num_hidden_layers
        in_weights = (layers.weight_layer_count(self.model.checkpoint, config_layers)
                      if self.request.stage == "b" else None)
        return layers.assess(self.plan.argv, self.request.stage, config_layers, in_weights)

    # ------------------------------------------------------------------ watching
    def _pump(self) -> None:
        if self.session is not None:
            self.session.pump()

    def _server_gone(self) -> bool:
        return self.session is not None and self.session.server.poll() is not None

    def _watched(self, call: Callable[[], RequestResult], ready_line: int) -> RequestResult | None:
        """Run a request in a thread while watching the process and the log, so a dying server
        is noticed within a second or two even if the request would hang."""
        box: list[RequestResult] = []
        worker = threading.Thread(target=lambda: box.append(call()), daemon=True)
        worker.start()
        trouble_since: float | None = None
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            self._pump()
            if self._server_gone() or self.scanner.failures(since_line=ready_line):
                trouble_since = trouble_since or time.monotonic()
                if time.monotonic() - trouble_since > AFTER_DEATH_GRACE:
                    break
        return box[0] if box else None

    def _send_smoke(self, url: str, ready_line: int) -> list[RequestResult]:
        timeout = self.settings.request_timeout
        key = self.settings.api_key
        calls: list[tuple[str, Callable[[], RequestResult]]] = [
            ("text", lambda: chat(url, self.served_name, api_key=key, timeout=timeout)),
            ("stream", lambda: chat_stream(url, self.served_name, api_key=key, timeout=timeout)),
        ]
        if self.multimodal and self.request.variant.name != "text-only":
            calls.append(("image", lambda: chat(url, self.served_name, kind="image", api_key=key, timeout=timeout)))
        results: list[RequestResult] = []
        for kind, call in calls:
            result = self._watched(call, ready_line)
            if result is None:
                result = RequestResult(kind, False, None, 0.0, error="server died while the request was in flight")
            results.append(result)
            assert self.requests_log is not None
            self.requests_log.append(result.to_record())
            self.out(f"  {kind:6s} {'ok ' if result.ok else 'BAD'} {result.status} "
                     f"{result.latency_s * 1000:.0f} ms  {(result.content or result.error)[:60]!r}")
            if self._server_gone():
                break
        return results

    def send_requests(self, url: str, ready_line: int) -> list[RequestResult]:
        """The requests of this run once the server is ready (the smoke requests here)."""
        return self._send_smoke(url, ready_line)

    # ------------------------------------------------------------------ verdicts
    def _decide(self, outcome: WatchOutcome, results: list[RequestResult]) -> None:
        rec = self.record
        ready_line = outcome.ready_line
        diagnosis = diagnosis_of(self.scanner, model=shlex.quote(self.model.requested or self.model_name),
                                 step=self.request.make_target or self.request.step,
                                 extra_args=self.settings.extra_args, run=self._run_inputs(),
                                 log_path=self.run_dir / "serve.log" if self.run_dir else None)
        if diagnosis.verdict == "FAIL" or diagnosis.hint_en:
            rec["diagnosis"] = {"category": diagnosis.category, "signature": diagnosis.sig_id,
                                "hint_zh": diagnosis.hint_zh, "hint_en": diagnosis.hint_en,
                                "rung": diagnosis.rung, "next_command": diagnosis.next_command,
                                "phase": diagnosis.failure_phase}
        if diagnosis.last_line:
            rec["last_line"] = {"line_no": diagnosis.last_line_no, "text": diagnosis.last_line}
        if outcome.state != "ready":
            cause = diagnosis.root_dict()
            category = diagnosis.category if diagnosis.verdict == "FAIL" else None
            if category in (None, "false-ready"):  # never ready: a startup failure, not a false-ready
                category = {"stalled": "stalled", "timeout": "timeout"}.get(outcome.state, "startup")
            rec["verdict"], rec["category"] = "FAIL", category
            detail = outcome.detail
            if outcome.state == "fatal" and cause:  # the first failure line may be a wrapper: name the root cause
                detail = f"line {cause['line_no']}: {cause['text']}"
            rec["reason"] = f"server never became ready: {outcome.state} ({detail})"
            estimate = self.scanner.evidence.get("estimated_max_model_len")
            if category == "kv-too-small" and estimate:
                length = self.defaults["max_model_len"]
                rec["reason"] = (f"the KV cache cannot hold one request of {self._max_model_len()} tokens "
                                 f"(max-model-len from {length.source}); vLLM estimates the maximum model "
                                 f"length at {estimate}")
            rec["root_cause"] = cause
            return
        dead_after_ready = self._server_gone()
        late_failures = self.scanner.failures(since_line=ready_line)
        bad = [r for r in results if not r.ok]
        if not bad and not dead_after_ready and not late_failures:
            rec["verdict"], rec["category"] = "PASS", None
            rec["reason"] = "ready, every smoke request answered 200 with text, server alive, no fatal line"
            self._graph_decides()
            return
        rec["verdict"] = "FAIL"
        cause = self.scanner.root_cause(since_line=ready_line)
        # the diagnosis' root cause when it is after ready (the FAIL line and evidence name one line)
        rec["root_cause"] = (diagnosis.root_dict() if (diagnosis.root_cause_line or 0) > (ready_line or 0)
                             else cause.to_dict() if cause else None)
        server_side = dead_after_ready or late_failures or any(
            r.status is None or (r.status or 0) >= 500 for r in bad)
        served = {r.kind for r in results if r.ok}
        if bad and not dead_after_ready and {"text", "stream"} <= served and all(
                r.kind == "image" and (r.status is None or r.status >= 500) for r in bad):
            # alive and serving text: the image path failed (processor or vision encoder), not the start
            rec["category"] = "image-request-failed"
            rec["reason"] = ("the server serves text and streaming; the image request failed: "
                             + "; ".join(f"{r.status or 'no reply'} {r.error[:160]}" for r in bad))
        elif server_side:
            rec["category"] = "false-ready"
            # the replies' statuses only: the reply bodies quote wrappers; the root-cause line says why
            what = "; ".join(f"{r.kind}: {r.error if r.status is None else f'HTTP {r.status}'}"
                             for r in bad) or "server died after ready"
            cause = rec.get("root_cause") or {}
            where = f"; root cause at serve.log line {cause['line_no']}" if cause.get("line_no") else ""
            rec["reason"] = f"false-ready: started and answered /v1/models, then failed on requests ({what}){where}"
        elif any("empty output" in r.error for r in bad):
            rec["category"] = "empty-output"
            rec["reason"] = "requests answered 200 without text: " + "; ".join(f"{r.kind}: {r.error}" for r in bad)
        else:
            rec["category"] = "request-rejected"
            rec["reason"] = "requests rejected: " + "; ".join(f"{r.kind}: {r.error}" for r in bad)

    def _run_inputs(self) -> RunInputs:
        """What this run had, so its next command neither repeats it nor loses the user's variables."""
        return RunInputs(list(self.plan.argv), dict(self.plan.env), self.request.stage, dict(self.settings.given))

    def _max_model_len(self) -> str:
        argv = self.plan.argv
        return argv[argv.index("--max-model-len") + 1] if "--max-model-len" in argv else "?"

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        self.profile.check_installed()
        if self.request.stage == "b":  # an adapter's weight mapping, proven before the start
            from helpers.adapt.gate import before_stage_b

            before_stage_b(self.settings, self.model, self.profile.name, self.out)
        if self.shared is None:
            require_free_port(self.settings.host, self.settings.port, self.settings.runs_dir)
        self.context = context_check.preflight(self.settings, self.model, self.profile, self.plan,
                                               npus=self.shared is None)
        self._open_run()
        assert self.run_dir is not None
        if self.shared is not None:
            self.record["log"] = str(Path(self.shared.run_dir) / "serve.log")
            self.record["shared_server"] = {"run_dir": self.shared.run_dir, "pid": self.shared.pid,
                                            "port": self.shared.port, "compared": "argv, env, checkpoint, roots"}
        self._start_warnings()  # into the record's warnings list, saved with the next write
        label = f"{self.request.step} {self.model_name}"
        progress = Progress(label)
        outcome: WatchOutcome | None = None
        results: list[RequestResult] = []
        phase = "starting"
        for warning in self.warnings:
            self.out(f"[{label}] warning: {warning}")
        for name, chosen in self.defaults.items():
            if chosen.value is not None and not chosen.source.startswith(("TP (", "MAX_MODEL_LEN (")):
                self.out(f"[{label}] {name.replace('_', '-')} {chosen.value}: {chosen.source}")
        url = base_url(self.settings.host, self.settings.port)
        self.out(f"[{label}] starting {self.profile.name} server on {url}; evidence: {self.run_dir}" if self.shared is None
                 else f"[{label}] served by our live server on {url} (started by {self.shared.run_dir}, the same "
                      f"command, checkpoint and roots): no start; evidence: {self.run_dir}")
        with SignalGuard():
            try:
                with self._server() as session:
                    self.session = session
                    self.record["server"] = {"pid": session.server.pid, "pgid": session.server.record.pgid}
                    self._save()
                    outcome = session.wait_ready(timeout=self.settings.ready_timeout,
                                                 stall_timeout=self.settings.stall_timeout,
                                                 api_key=self.settings.api_key, progress=progress)
                    self.record["readiness"] = outcome.to_dict()
                    self.record["timings"]["start_to_ready_s"] = round(outcome.elapsed, 3)
                    self._save()
                    if outcome.state == "ready":
                        phase = self.request_phase
                        self.out(f"[{label}] ready in {outcome.elapsed:.1f} s; sending {self.request_phase}")
                        self._pump()
                        self.first_request_line = self.scanner.line_no  # graph evidence must come later
                        if self.shared is not None:  # logged once per process: after its own ready
                            self.first_request_line = self.scanner.ready_line or 0
                        results = self.send_requests(session.url, outcome.ready_line)
                        if results:
                            self.record["timings"]["first_request_s"] = round(results[0].latency_s, 3)
                        end = time.monotonic() + LOG_SETTLE_SECONDS
                        while time.monotonic() < end:
                            self._pump()
                            time.sleep(0.1)
                        self.record["graph"] = self._graph_check()
                    self._decide(outcome, results)
            except Interrupted as stop:
                progress.done()
                self.record["verdict"] = "INTERRUPTED"
                self.record["category"] = "interrupted"
                self.record["reason"] = (f"interrupted by signal {signal.Signals(stop.signum).name} during "
                                         f"{phase if outcome else self.scanner.phase}")
            finally:
                if self.session is not None:
                    self.record["stop"] = self.session.stop_how
                self.scanner.finish()
                self._finish(results)
        return self.exit_code()

    def _server(self):
        if self.shared is not None:
            return sharing(self.shared, Path(self.shared.run_dir) / "serve.log", self.served_name, self.scanner)
        assert self.run_dir is not None
        return serving(self.plan, self.run_dir / "serve.log", runs_dir=self.settings.runs_dir,
                       token=self.settings.run_token, scanner=self.scanner, keep=self.keep_running)

    def _finish(self, results: list[RequestResult]) -> None:
        rec = self.record
        rec["status"] = "done"
        rec["finished_at"] = ev.utc_iso()
        rec["timings"]["total_s"] = round(time.monotonic() - self.t0, 3)
        rec["requests"] = [{k: v for k, v in r.to_record().items() if k != "payload"} for r in results]
        scan = self.scanner.to_dict()
        rec["signatures"] = scan.get("hits", [])
        rec["log_evidence"] = scan.get("evidence", {})
        rec["log_scan"] = {k: scan.get(k) for k in ("lines", "phase", "ready_line", "stop_line", "hit_counts",
                                                     "evidence_lines")}
        if rec["verdict"] is None:
            rec["verdict"], rec["category"] = "FAIL", "internal"
            rec["reason"] = "the run ended before a verdict (see serve.log)"
        if self.post_check is not None and rec["verdict"] != "INTERRUPTED":
            self.post_check(self)
        rec["timeline"] = timeline_of_log(self.run_dir / "serve.log", rec, at_run_end=True)  # phases, graph capture s / GiB
        rec["exit_code"] = self.exit_code()
        self._save()
        assert self.run_dir is not None
        ev.point_latest(self.run_dir, self.request.step)
        line = f"{rec['verdict']} {self.request.step} {self.model_name}"
        if rec["verdict"] != "PASS":
            line += f" [{rec['category']}] {rec['reason']}"
            cause = rec.get("root_cause")
            if cause:
                line += f"\n  root cause (serve.log line {cause.get('line_no')}): {cause.get('text')}"
            elif rec.get("last_line"):
                last = rec["last_line"]
                line += f"\n  last line (serve.log line {last.get('line_no')}): {last.get('text')}"
            diagnosis = rec.get("diagnosis") or {}
            where = diagnosis.get("phase") or {}
            if where:
                line += f"\n  phase: {where.get('name')} ({where.get('how')})"
            if diagnosis.get("hint_en") and not self.request.quiet_next:
                line += f"\n  hint: {diagnosis['hint_en']}\n  提示: {diagnosis['hint_zh']}"
            if diagnosis.get("next_command") and not self.request.quiet_next:
                line += f"\n  next: {diagnosis['next_command']}"
        used = layers.of_record(rec)
        if used.reduced:
            line += f"\n  reduced-layers ({used.describe()}): smoke evidence only, a full-layer Stage B signs off"
        graph = rec.get("graph")
        if graph and graph.get("status") == "FAIL" and rec.get("category") != graph.get("category"):
            line += f"\n  graph mode ({graph['name']}): FAIL, {graph['reason']}"
        elif graph and graph.get("status") == "PASS" and graph.get("mode") != "default":
            line += f"\n  graph mode ({graph['name']}): {graph['reason']}"
        self.out(line + f"\n  evidence: {self.run_dir}")

    def exit_code(self) -> int:
        verdict = self.record.get("verdict")
        if verdict == "INTERRUPTED":
            return EXIT_INTERRUPTED
        return EXIT_PASS if verdict in ("PASS", "ACCEPTED", "NOT_APPLICABLE", "CHECKPOINT_MISSING",
                                        "FRAMEWORK_UNSUPPORTED") else EXIT_FAIL
