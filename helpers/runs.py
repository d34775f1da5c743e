"""Recorded runs of a model as objects: every <stamp>-<step>/evidence.json with the files beside
it (command.sh, requests.jsonl, serve.log), and the views the deliverables and the status need:
the latest run of a step, the passing modes, which run is a fallback, which features a run had
on, whether it used every layer, and whether the evidence signs off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import evidence as ev
from helpers import layers as layer_use

NOT_RUN = "NOT_RUN"
FALLBACK_KINDS = ("eager", "dynamo", "text-only")
CAPACITY_PREFIX = "capacity"


def dig(data: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


@dataclass
class Run:
    """One recorded stage/feature/ladder run (evidence.json and the files beside it)."""

    data: dict[str, Any]
    run_dir: Path

    @property
    def step(self) -> str:
        return self.data.get("step") or self.run_dir.name.split("-", 1)[-1]

    @property
    def stage(self) -> str | None:
        return self.data.get("stage")

    @property
    def verdict(self) -> str:
        return self.data.get("verdict") or ("INTERRUPTED" if self.data.get("status") == "running" else NOT_RUN)

    @property
    def log(self) -> Path:
        return self.run_dir / (self.data.get("log") or "serve.log")

    @property
    def argv(self) -> list[str]:
        return list(dig(self.data, "command", "argv", default=[]) or [])

    @property
    def env(self) -> dict[str, str]:
        return dict(dig(self.data, "command", "env", default={}) or {})

    @property
    def fallback_kind(self) -> str | None:
        """eager / dynamo / text-only when this run used a fallback of the ladder, else None."""
        if self.step == "text-only" or any(a.startswith("--limit-mm-per-prompt") for a in self.argv):
            return "text-only"
        if self.env.get("TORCHDYNAMO_DISABLE") == "1":
            return "dynamo"
        if "--enforce-eager" in self.argv:
            return "eager"
        return None

    @property
    def layers(self) -> layer_use.LayerUse:
        return layer_use.of_record(self.data)

    @property
    def features_on(self) -> tuple[str, ...]:
        """The default-set features this run had switched on (and, for the graph, proved)."""
        argv, on = self.argv, []
        if (self.data.get("graph") or {}).get("status") == "PASS":
            on.append("aclgraph")
        if "--enable-expert-parallel" in argv:
            on.append("ep")
        if any("FLASHCOMM" in key and value == "1" for key, value in self.env.items()) or any(
                "enable_flashcomm1" in arg and "true" in arg for arg in argv):
            on.append("flashcomm1")
        if any(arg.split("=", 1)[0] == "--speculative-config" for arg in argv):
            on.append("mtp")
        return tuple(on)

    def as_source(self) -> dict[str, Any]:
        """How capacity.json and accuracy.json name the run they served like."""
        variant = self.data.get("variant") or {}
        return {"run_dir": str(self.run_dir), "step": self.step, "variant": variant.get("name") or "base",
                "flags": list(variant.get("flags") or []), "env": dict(variant.get("env") or {}),
                "features_on": list(self.features_on)}

    def command_lines(self) -> list[str]:
        """command.sh as a terminal would take it: no shebang, comments, strict mode or exec."""
        try:
            text = (self.run_dir / "command.sh").read_text(encoding="utf-8")
        except OSError:
            return []
        lines = []
        for line in text.splitlines():
            if line.startswith("#") or line.strip() in ("set -euo pipefail", ""):
                continue
            lines.append(line[5:] if line.startswith("exec ") else line)
        return lines

    def payload(self, kind: str) -> dict[str, Any] | None:
        try:
            lines = (self.run_dir / "requests.jsonl").read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("kind") == kind and record.get("payload"):
                return record["payload"]
        return None

    def view(self) -> dict[str, Any]:
        d = self.data
        cause = d.get("root_cause") or {}
        hits = d.get("signatures") or []
        first_hint = next((h.get("hint_zh") for h in hits if isinstance(h, dict) and h.get("hint_zh")), None)
        return {
            "step": self.step, "stage": (self.stage or "?").upper(), "verdict": self.verdict,
            "category": d.get("category"), "reason": d.get("reason"), "run_dir": str(self.run_dir),
            "log": str(self.log), "log_exists": self.log.is_file(), "started_at": d.get("started_at"),
            "fallback": self.fallback_kind, "feature": d.get("feature"),
            "layers": self.layers.to_dict(), "layers_text": self.layers.describe(),
            "features_on": list(self.features_on),
            "no_server": d.get("server_started") is False,
            "root_cause": ({"line_no": cause.get("line_no"), "text": cause.get("text"),
                            "sig_id": cause.get("sig_id"), "category": cause.get("category")} if cause else None),
            # the diagnosis' advice (by failure phase) before the first signature's, which may be a wrapper's
            "hint_zh": dig(d, "diagnosis", "hint_zh") or first_hint,
            "next_command": dig(d, "diagnosis", "next_command"),
            "ready_s": dig(d, "timings", "start_to_ready_s"),
            "graph": d.get("graph") or {},
            "requests": [{"kind": r.get("kind"), "ok": r.get("ok"), "status": r.get("status"),
                          "content": (r.get("content") or "")[:40], "error": (r.get("error") or "")[:160]}
                         for r in d.get("requests") or []],
            "shell": dig(d, "command", "shell"),
        }


def read_runs(model_dir: Path) -> list[Run]:
    """Every <stamp>-<step>/evidence.json under the model's directory, oldest first."""
    runs = [Run(data, run_dir.resolve()) for run_dir, data in ev.iter_evidence(model_dir)]
    runs.sort(key=lambda r: (r.data.get("started_at") or "", r.run_dir.name))
    return runs


def latest(runs: list[Run], predicate) -> Run | None:
    chosen = [r for r in runs if predicate(r)]
    return chosen[-1] if chosen else None


def is_serving_run(run: Run) -> bool:
    """Stage B runs that deploy the model (stage, feature, ladder), not capacity cells."""
    return run.stage == "b" and not run.step.startswith(CAPACITY_PREFIX)


@dataclass
class Modes:
    primary: Run | None
    primary_is_fallback: bool
    eager: Run | None
    dynamo: Run | None
    text_only: Run | None
    reduced: Run | None  # the newest passing layer-reduced Stage B run (never documented)


def passing_modes(runs: list[Run]) -> Modes:
    """The documented command is the validated feature-first one: among the passing full-layer
    Stage B runs, the one with the most default-set features on (graph + EP + MTP where they
    passed), the newest on a tie. Fallbacks (eager, TORCHDYNAMO_DISABLE, text-only) are the
    primary only when no other mode passed; a layer-reduced run never is."""
    passing = [r for r in runs if is_serving_run(r) and r.verdict == "PASS"]
    full = [r for r in passing if not r.layers.reduced]
    normal = [r for r in full if r.fallback_kind is None]
    fallback = {kind: latest(full, lambda r, k=kind: r.fallback_kind == k) for kind in FALLBACK_KINDS}
    # max() keeps the first of equal keys: iterate newest first so a tie goes to the newest run
    primary = max(reversed(normal), key=lambda r: len(r.features_on)) if normal else (full[-1] if full else None)
    reduced = latest(passing, lambda r: r.layers.reduced)
    return Modes(primary, bool(primary and primary.fallback_kind), fallback["eager"], fallback["dynamo"],
                 fallback["text-only"], reduced)


def recorded_contexts(model_dir: Path) -> list[dict[str, Any]]:
    """Every context (`make context`) this model's evidence recorded: context.json, triage.json's,
    each run's evidence.json."""
    found = []
    for name in ("context.json", "triage.json"):
        try:
            data = ev.read_json(Path(model_dir) / name)
        except (OSError, ValueError):
            continue
        found.append(data.get("context") if name == "triage.json" else data)
    found += [record.get("context") for _dir, record in ev.iter_evidence(model_dir)]
    return [c for c in found if isinstance(c, dict) and c.get("generated_at")]


def first_seen_heads(model_dir: Path) -> dict[str, str]:
    """Implementation root path -> the HEAD the earliest recorded context of this model saw there
    (the base `make changes` diffs against)."""
    seen: dict[str, tuple[str, str]] = {}
    for record in recorded_contexts(model_dir):
        for root in (record.get("roots") or {}).values():
            path, head = root.get("path"), root.get("head")
            if path and head and (path not in seen or record["generated_at"] < seen[path][0]):
                seen[path] = (record["generated_at"], head)
    return {path: head for path, (_when, head) in seen.items()}


def documented_run(model_dir: Path) -> Run | None:
    """The run whose command the deliverables document (capacity and accuracy serve like it)."""
    return passing_modes(read_runs(model_dir)).primary
