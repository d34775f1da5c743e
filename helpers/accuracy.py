"""Accuracy: lm-evaluation-harness against our OpenAI-compatible server.

Uses a server of ours already running for MODEL on PORT (state file in RUNS_DIR/.state), or
starts one with the Stage B plan (real weights) and stops it at the end. lm-eval runs as a
subprocess (`python -m lm_eval --model local-completions ...`) in its own process group, its
output captured to lm_eval.log; its results JSON is parsed and the metric names are kept
exactly as lm-eval reports them (`exact_match,strict-match`), because the vllm-ascend e2e
accuracy YAML is compared against them.

Evidence: RUNS_DIR/<model>/<stamp>-accuracy/ holds accuracy.json (rewritten as the run goes),
lm_eval.log, lm_eval.sh (the exact lm-eval command), lm_eval/ (lm-eval's own output and
samples) and, when this step started the server, command.sh, serve.log and server.json.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from helpers import box, defaults, profiles, runs
from helpers import evidence as ev
from helpers.e2e import serve_block
from helpers.errors import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS, EnvironmentProblem, Interrupted, UsageError
from helpers.lifecycle import SignalGuard, serving
from helpers.model import Model
from helpers.plan import Variant, mask, plan_for
from helpers.readiness import Progress, base_url, probe_ready
from helpers.serve import ServerRecord, recorded_servers, require_free_port, stop_child_group
from helpers.settings import Settings

STEP = "accuracy"
POLL_SECONDS = 0.5
LM_EVAL_STOP_GRACE = 10.0
# Offline always: no dataset or tokenizer download at run time (stock tasks need the HF cache).
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def lm_eval_version() -> str | None:
    return box.package_version("lm_eval") or box.package_version("lm-eval")


# ----------------------------------------------------------------------------- the server
@dataclass
class ServerChoice:
    url: str
    served_name: str
    argv: list[str]
    reused: bool
    run_dir: str
    alive: Callable[[], bool]


def find_running_server(settings: Settings, model_name: str) -> tuple[ServerRecord, dict[str, Any]] | None:
    """Our recorded, still-running server on PORT, with the evidence of the run that started it.
    A server of ours on PORT for another model, or with dummy weights, is refused (exit 3)."""
    for _path, record in recorded_servers(settings.runs_dir):
        if record.port != settings.port or not record.is_alive_and_ours():
            continue
        started_by = Path(record.run_dir)
        try:
            evidence = ev.read_json(started_by / "evidence.json")
        except (OSError, ValueError):
            evidence = {}
        served_model = evidence.get("model") or ev.safe_name(Path(record.run_dir).parent.name)
        if served_model != model_name:
            raise EnvironmentProblem(
                f"port {settings.port} is held by our server for {served_model!r} (run {record.run_dir}), not {model_name!r}",
                f"stop it with `make hygiene PORT={settings.port}` or choose another PORT")
        if evidence.get("stage") == "a":
            raise EnvironmentProblem(
                f"our server on port {settings.port} serves dummy weights (Stage A, run {record.run_dir}); "
                "accuracy needs the real weights",
                f"stop it with `make hygiene PORT={settings.port}` and rerun: accuracy then starts a Stage B server")
        return record, evidence
    return None


# ----------------------------------------------------------------------------- lm-eval
def lm_eval_argv(*, python: str, served_name: str, url: str, tasks: list[str], num_fewshot: int | None,
                 limit: int | float | None, output_dir: Path, dataset_dir: Path | None, num_concurrent: int,
                 request_timeout: int) -> list[str]:
    model_args = ",".join([
        f"model={served_name}",
        f"base_url={url}/v1/completions",
        "tokenized_requests=False",
        "tokenizer_backend=None",
        f"num_concurrent={num_concurrent}",
        f"timeout={request_timeout}",
    ])
    argv = [python, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
            "--tasks", ",".join(tasks), "--output_path", str(output_dir), "--log_samples"]
    if num_fewshot is not None:
        argv += ["--num_fewshot", str(num_fewshot)]
    if limit is not None:
        argv += ["--limit", str(limit)]
    if dataset_dir is not None:
        argv += ["--include_path", str(dataset_dir)]
    return argv


def find_results_file(output_dir: Path) -> Path | None:
    found = sorted(output_dir.glob("**/results_*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def parse_results(path: Path, tasks: list[str], limit: int | float | None) -> list[dict[str, Any]]:
    """Metrics per requested task, names exactly as lm-eval writes them ("exact_match,strict-match").
    Standard errors are kept apart (`stderr`), lm-eval's `alias` is dropped."""
    data = ev.read_json(path)
    tables = {**data.get("groups", {}), **data.get("results", {})}
    n_shot = data.get("n-shot", {})
    n_samples = data.get("n-samples", {})
    parsed = []
    for name in tasks:
        if name not in tables:
            raise UsageError(f"lm-eval results {path} hold no task {name!r} (it has {sorted(tables)})",
                             "check TASKS against the task names of DATASET_DIR")
        metrics: dict[str, Any] = {}
        stderr: dict[str, Any] = {}
        for key, value in tables[name].items():
            if "," not in key:
                continue  # alias, sample counts
            metric, _, _filter = key.partition(",")
            (stderr if metric.endswith("_stderr") else metrics)[key] = value
        samples = n_samples.get(name) or {}
        parsed.append({"name": name, "num_fewshot": n_shot.get(name), "limit": limit,
                       "samples": samples.get("effective"), "metrics": metrics, "stderr": stderr})
    return parsed


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 4096))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in re.split(r"[\r\n]", tail) if line.strip()]
    return lines[-1][:100] if lines else ""


def _error_line(path: Path) -> str:
    """The most telling line of a failed lm-eval run: the last exception line, else the last line."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if re.search(r"\b\w+(Error|Exception)\b", line):
            return line.strip()[:300]
    return next((line.strip()[:300] for line in reversed(lines) if line.strip()), "")


# ----------------------------------------------------------------------------- the run
class AccuracyRun:
    def __init__(self, settings: Settings, model: Model, out: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.model = model
        self.out = out or (lambda line: print(line, flush=True))
        if not settings.tasks:
            raise UsageError("TASKS is empty", "set TASKS=gsm8k (comma-separated lm-eval task names)")
        self.tasks = settings.tasks
        self.dataset_dir = settings.dataset_dir
        if self.dataset_dir is not None and not self.dataset_dir.is_dir():
            raise UsageError(f"DATASET_DIR={str(self.dataset_dir)!r} is not a directory",
                             "point it at a directory of lm-eval task YAMLs and their local data files")
        self.profile = profiles.load(settings.backend)
        self.model_name = model.name
        self.secrets = [settings.api_key] if settings.api_key else []
        self.run_dir: Path | None = None
        self.record: dict[str, Any] = {}

    def _save(self) -> None:
        assert self.run_dir is not None
        text = mask(json.dumps(self.record, indent=2, ensure_ascii=False, default=str), self.secrets)
        ev.atomic_write_text(self.run_dir / "accuracy.json", text + "\n")

    def _serve_and_evaluate(self, progress: Progress) -> int:
        """Start a Stage B server for the run, run lm-eval against it, stop it."""
        assert self.run_dir is not None
        documented = runs.documented_run(self.model.runs_dir) if self.settings.serve_as == "documented" else None
        variant = Variant.of_record(documented.data) if documented else Variant()
        self.record["serve_from"] = documented.as_source() if documented else None
        # the same TP and length a Stage B run of this profile chooses when they are unset
        chosen = defaults.choose(self.settings, self.model, self.profile, self.out)
        self.record["defaults"] = {name: value.to_dict() for name, value in chosen.items()}
        plan = plan_for(self.profile, self.settings, self.model, "b", variant, tp=chosen["tp"].value,
                        max_model_len=chosen["max_model_len"].value)
        header = (f"Server of {self.run_dir} (accuracy, Stage B plan, backend {self.profile.name}).\n"
                  "Written by the bring-up toolkit; runs the server in the foreground, Ctrl-C stops it.")
        command_sh = self.run_dir / "command.sh"
        ev.atomic_write_text(command_sh, mask(plan.command_sh(header), self.secrets))
        command_sh.chmod(0o755)
        self.out(f"[accuracy {self.model_name}] starting a Stage B {self.profile.name} server on "
                 f"{base_url(plan.host, plan.port)}")
        code = EXIT_FAIL
        session = None
        try:
            with serving(plan, self.run_dir / "serve.log", runs_dir=self.settings.runs_dir,
                         token=self.settings.run_token) as session:
                self.record["server"] = {"reused": False, "run_dir": str(self.run_dir), "log": "serve.log",
                                         "command": plan.shell_line(), "pid": session.server.pid}
                self._save()
                outcome = session.wait_ready(timeout=self.settings.ready_timeout,
                                             stall_timeout=self.settings.stall_timeout,
                                             api_key=self.settings.api_key, progress=progress)
                self.record["server"]["readiness"] = outcome.to_dict()
                self._save()
                if outcome.state != "ready":
                    self.record["verdict"] = "FAIL"
                    self.record["reason"] = f"the server never became ready: {outcome.state} ({outcome.detail})"
                else:
                    self.out(f"[accuracy {self.model_name}] server ready in {outcome.elapsed:.1f} s")
                    choice = ServerChoice(session.url, plan.served_name, plan.argv, False, str(self.run_dir),
                                          session.server.alive)
                    code = self._run_lm_eval(choice, progress)
        finally:
            if session is not None:  # stopped by serving(), also when interrupted
                self.record["server"]["stop"] = session.stop_how
        return code

    def _run_lm_eval(self, choice: ServerChoice, progress: Progress) -> int:
        assert self.run_dir is not None
        output_dir = self.run_dir / "lm_eval"
        block = serve_block(choice.argv)
        concurrency = self.settings.max_num_seqs or _flag_int(choice.argv, "--max-num-seqs") or 1
        argv = lm_eval_argv(python=sys.executable, served_name=choice.served_name, url=choice.url,
                            tasks=self.tasks, num_fewshot=self.settings.num_fewshot, limit=self.settings.limit,
                            output_dir=output_dir, dataset_dir=self.dataset_dir,
                            num_concurrent=min(concurrency, 8), request_timeout=self.settings.request_timeout)
        env = dict(os.environ)
        env.update(OFFLINE_ENV)
        if self.dataset_dir is not None:
            # Local data files: keep the datasets cache with the evidence, not in the home cache.
            env["HF_DATASETS_CACHE"] = str(self.run_dir / "hf_datasets_cache")
        if self.settings.api_key:
            env["OPENAI_API_KEY"] = self.settings.api_key  # lm-eval's local-completions reads it
        cwd = str(self.dataset_dir) if self.dataset_dir else None  # relative data_files resolve there
        script = ["#!/usr/bin/env bash", f"# lm-eval command of {self.run_dir}.", "set -euo pipefail"]
        if cwd:
            script.append(f"cd {shlex.quote(cwd)}")
        script += [f"export {k}={shlex.quote(v)}" for k, v in OFFLINE_ENV.items()]
        if self.settings.api_key:
            script.append('export OPENAI_API_KEY="${VLLM_API_KEY:?export VLLM_API_KEY first}"')
        script.append(" ".join(shlex.quote(a) for a in argv))
        ev.atomic_write_text(self.run_dir / "lm_eval.sh", "\n".join(script) + "\n")
        (self.run_dir / "lm_eval.sh").chmod(0o755)
        self.record.update({"base_url": choice.url, "served_name": choice.served_name, "serve": block,
                            "lm_eval": {"argv": argv, "file": "lm_eval.sh", "cwd": cwd,
                                        "log": "lm_eval.log", "output_path": str(output_dir)}})
        self._save()
        log_path = self.run_dir / "lm_eval.log"
        self.out(f"[accuracy {self.model_name}] lm-eval {','.join(self.tasks)} against {choice.url} "
                 f"(log: {log_path})")
        started = time.monotonic()
        with open(log_path, "ab", buffering=0) as log:
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.record["lm_eval"]["pid"] = process.pid
        self._save()
        try:
            while process.poll() is None:
                if not choice.alive():
                    time.sleep(1.0)  # let lm-eval log the refused connection
                    stop_child_group(process, LM_EVAL_STOP_GRACE)
                    self.record["verdict"] = "FAIL"
                    self.record["reason"] = ("the server died while lm-eval was running"
                                             + (f"; see {choice.run_dir}/serve.log" if not choice.reused else ""))
                    return EXIT_FAIL
                progress.update(time.monotonic() - started, "lm-eval", _last_line(log_path))
                time.sleep(POLL_SECONDS)
        finally:
            stop_child_group(process, LM_EVAL_STOP_GRACE)
            progress.done()
        self.record["lm_eval"]["returncode"] = process.returncode
        self.record["lm_eval"]["elapsed_s"] = round(time.monotonic() - started, 3)
        if process.returncode != 0:
            self.record["verdict"] = "FAIL"
            self.record["reason"] = (f"lm-eval exited with code {process.returncode}: "
                                     f"{_error_line(log_path) or 'see lm_eval.log'}")
            return EXIT_FAIL
        results = find_results_file(output_dir)
        if results is None:
            self.record["verdict"] = "FAIL"
            self.record["reason"] = f"lm-eval finished but wrote no results_*.json under {output_dir}"
            return EXIT_FAIL
        self.record["tasks"] = parse_results(results, self.tasks, self.settings.limit)
        self.record["results_file"] = str(results.relative_to(self.run_dir))
        self.record["verdict"] = "PASS"
        self.record["reason"] = "lm-eval finished; metrics as lm-eval reports them"
        return EXIT_PASS

    def run(self) -> int:
        if not box.module_importable("lm_eval"):
            raise EnvironmentProblem("lm-eval is not installed in this Python",
                                     "run `make accuracy`, which installs lm-eval[api]==0.4.13 into the venv")
        running = find_running_server(self.settings, self.model_name)
        if running is None:  # checked before any evidence is written: nothing to clean up
            self.profile.check_installed()
            require_free_port(self.settings.host, self.settings.port, self.settings.runs_dir)
        self.run_dir = ev.new_run_dir(self.settings.runs_dir, self.model_name, STEP)
        self.record = {
            "schema": 1, "status": "running", "step": STEP, "model": self.model_name,
            "model_path": str(self.model.checkpoint), "served_name": None, "backend": self.profile.name,
            "tasks": [], "requested": {"tasks": self.tasks, "num_fewshot": self.settings.num_fewshot,
                                       "limit": self.settings.limit,
                                       "dataset_dir": str(self.dataset_dir) if self.dataset_dir else None},
            # How lm-eval was driven: plain completions, no chat template (the e2e YAML says so too).
            "apply_chat_template": False, "fewshot_as_multiturn": False,
            "lm_eval_version": lm_eval_version(), "base_url": None, "serve": {}, "serve_from": None,
            "started_at": ev.utc_iso(), "finished_at": None, "verdict": None, "reason": None,
            "run_dir": str(self.run_dir),
        }
        self._save()
        label = f"accuracy {self.model_name}"
        progress = Progress(label)
        code = EXIT_FAIL
        with SignalGuard():
            try:
                if running is not None:
                    code = self._reuse_and_evaluate(*running, progress)
                else:
                    code = self._serve_and_evaluate(progress)
            except Interrupted as stop:
                progress.done()
                self.record["verdict"] = "INTERRUPTED"
                self.record["reason"] = f"interrupted by signal {signal.Signals(stop.signum).name}"
                code = EXIT_INTERRUPTED
            finally:
                self._finish()
        return code

    def _reuse_and_evaluate(self, record: ServerRecord, evidence: dict[str, Any], progress: Progress) -> int:
        served = evidence.get("served_name") or self.model.served_name
        url = base_url(record.host, record.port)
        ready, why = probe_ready(url, served, self.settings.api_key)
        if not ready:
            raise EnvironmentProblem(f"our server on port {record.port} (run {record.run_dir}) is not ready: {why}",
                                     f"wait for it or stop it with `make hygiene PORT={record.port}`")
        argv = (evidence.get("command") or {}).get("argv") or shlex.split(record.command)
        choice = ServerChoice(url, served, argv, True, record.run_dir, record.is_alive_and_ours)
        self.record["server"] = {"reused": True, "run_dir": record.run_dir, "log": "serve.log",
                                 "command": record.command, "pid": record.pid}
        self.record["serve_from"] = {"run_dir": record.run_dir, "step": evidence.get("step"), "reused": True,
                                     "variant": (evidence.get("variant") or {}).get("name")}
        self.out(f"[accuracy {self.model_name}] using our running server on {url} (run {record.run_dir})")
        return self._run_lm_eval(choice, progress)

    def _finish(self) -> None:
        assert self.run_dir is not None
        rec = self.record
        rec["status"] = "done"
        rec["finished_at"] = ev.utc_iso()
        if rec["verdict"] is None:
            rec["verdict"], rec["reason"] = "FAIL", "the run ended before a verdict (see lm_eval.log)"
        self._save()
        ev.point_latest(self.run_dir, STEP)
        line = f"{rec['verdict']} accuracy {self.model_name}"
        if rec["verdict"] == "PASS":
            for task in rec["tasks"]:
                shown = ", ".join(f"{k} = {v}" for k, v in task["metrics"].items())
                line += f"\n  {task['name']} ({task['num_fewshot']}-shot): {shown}"
        else:
            line += f": {rec['reason']}"
        self.out(line + f"\n  evidence: {self.run_dir / 'accuracy.json'}")


def _flag_int(argv: list[str], flag: str) -> int | None:
    try:
        return int(argv[argv.index(flag) + 1])
    except (ValueError, IndexError):
        return None
