"""Starts that are not needed: a fresh PASS of the same command is reused, not rerun, and a live
server of ours started with exactly a step's command serves that step.

"The same command": the same argv and env, apart from what only says where a run ran (the port,
the NPU group, the HCCL port range); "fresh": the checkpoint, the implementation roots and the
installed versions are what that run recorded (status.stale_reasons, the same test `make status`
applies)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import evidence as ev
from helpers import status
from helpers.plan import ServePlan
from helpers.serve import ServerRecord, recorded_servers

# where a run ran, not what it ran: two runs differing only here ran the same command
PLACE_FLAGS = ("--port", "--host")
PLACE_ENV = ("ASCEND_RT_VISIBLE_DEVICES", "HCCL_IF_BASE_PORT")


def _without_place(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in PLACE_FLAGS:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def command_differences(recorded: dict[str, Any] | None, plan: ServePlan) -> list[str]:
    """What differs between a recorded command (evidence `command`) and a plan; [] = the same."""
    if not recorded:
        return ["no command recorded"]
    why = []
    old_argv, new_argv = _without_place(list(recorded.get("argv") or [])), _without_place(plan.argv)
    if old_argv != new_argv:
        extra = [a for a in new_argv if a not in old_argv][:4]
        gone = [a for a in old_argv if a not in new_argv][:4]
        why.append(f"argv differs (now adds {extra or 'nothing'}, drops {gone or 'nothing'})")
    old_env = {k: v for k, v in (recorded.get("env") or {}).items() if k not in PLACE_ENV}
    new_env = {k: v for k, v in plan.env.items() if k not in PLACE_ENV}
    if old_env != new_env:
        keys = sorted(k for k in set(old_env) | set(new_env) if old_env.get(k) != new_env.get(k))
        why.append(f"env differs ({', '.join(keys)})")
    return why


def staleness(record: dict[str, Any], now: status.Now) -> list[str]:
    return status.stale_reasons(now, when=record.get("started_at"), context=record.get("context"),
                                model_path=record.get("model_path"), versions=record.get("versions"),
                                uses_weights=record.get("stage") != "a")


@dataclass
class Reused:
    record: dict[str, Any]
    line: str


def fresh_pass(model_runs: Path, step: str, plan: ServePlan, now: status.Now) -> Reused | None:
    """The latest run of `step` when it passed with this command and is still fresh."""
    record = ev.read_latest(model_runs, step)
    if not record or record.get("verdict") != "PASS":
        return None
    if command_differences(record.get("command"), plan) or staleness(record, now):
        return None
    age = status.age_text(record.get("finished_at"))
    return Reused(record, f"reused: PASS {step} from {record.get('run_dir')} ({age} ago): the same command on the "
                          "same checkpoint, roots and versions; FORCE=1 reruns it")


@dataclass
class LiveServer:
    """A server of ours still running, with the evidence of the run that started it."""

    record: ServerRecord
    evidence: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return Path(self.record.run_dir)

    @property
    def log(self) -> Path:
        return self.run_dir / "serve.log"


def live_server(runs_dir: Path, port: int) -> LiveServer | None:
    for _path, record in recorded_servers(runs_dir):
        if record.port == port and record.is_alive_and_ours():
            try:
                evidence = ev.read_json(Path(record.run_dir) / "evidence.json")
            except (OSError, ValueError):
                evidence = {}
            return LiveServer(record, evidence if isinstance(evidence, dict) else {})
    return None


def shareable(live: LiveServer, plan: ServePlan, now: status.Now) -> list[str]:
    """Why this live server cannot serve a step that would start `plan` ([] = it can): exactly the
    same argv and env (the port included: it is that server's port), the same checkpoint and roots."""
    why = []
    recorded = live.evidence.get("command") or {}
    if list(recorded.get("argv") or []) != plan.argv:
        why += command_differences(recorded, plan) or ["argv differs (host or port)"]
    elif dict(recorded.get("env") or {}) != plan.env:
        why.append("env differs")
    if live.evidence.get("verdict") != "PASS":
        why.append(f"its start did not pass ({live.evidence.get('verdict')})")
    why += staleness(live.evidence, now)
    return why
