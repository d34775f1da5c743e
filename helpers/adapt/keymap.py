"""`make keymap`: the weight mapping proven before any server.

The adapter's own load_weights (the class the roots register, as this box imports it) runs over
tensors built from the safetensors headers only (helpers/adapt/probe.py, its own process). The
report names checkpoint tensors no parameter takes, parameters no tensor fills and shape
mismatches, with the error vLLM raises for each (the line a Stage B start would print), fp8
weights without their scale, and the planned TP's KV-head and QK-norm sharding. Where the model
cannot be built this way, it says why and falls back to triage's header coverage.

Written to RUNS_DIR/<model>/<stamp>-keymap/keymap.json (never overwritten; latest-keymap points
at it) with what it was made on: the checkpoint, the implementation roots (HEAD and the dirty
files' content), the installed versions and the TP. Stage B reads the verdict and refuses a start
certain to fail (KEYMAP_CHECK=off skips); a keymap made on exactly what the box has now is reused
there, not made again (each dry run imports vLLM: seconds here, a minute on a box with vllm-ascend).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers import coverage
from helpers import checkpoint as ckpt
from helpers import evidence as ev
from helpers import status
from helpers.adapt import nearest
from helpers.adapt.probe import MARKER
from helpers.settings import REPO_ROOT

SHAPE_WORDS = ("Attempted to load weight", "size mismatch", "shape", "must match")


@dataclass
class Keymap:
    verdict: str                 # clean | faults | fallback-clean | fallback-faults
    method: str                  # load_weights on meta tensors | header coverage (transformers, meta device)
    why_fallback: str = ""
    model_class: str = ""
    source: str = ""
    tensors: int = 0
    unmapped: list[dict[str, str]] = field(default_factory=list)   # checkpoint keys no parameter takes
    shape: list[dict[str, str]] = field(default_factory=list)      # shape mismatches
    errors: list[dict[str, str]] = field(default_factory=list)     # any other error of load_weights
    unfilled: list[str] = field(default_factory=list)              # parameters no tensor fills
    fp8_unpaired: list[str] = field(default_factory=list)
    tp: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    timings: dict[str, Any] = field(default_factory=dict)  # the probe's: vLLM import, headers, built, done

    @property
    def failing(self) -> bool:
        return self.verdict.endswith("faults")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"failing": self.failing}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Keymap:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def tp_sharding(facts: ckpt.ConfigFacts, tp: int, has_qk_norm: bool) -> dict[str, Any]:
    """The planned TP against the heads: what a rank gets, and what cannot be split."""
    heads, kv = facts.num_attention_heads or 0, facts.num_key_value_heads or 0
    problems = []
    if heads and heads % tp:
        problems.append(f"{heads} attention heads do not split over TP={tp}")
    if kv and tp > kv and tp % kv:
        problems.append(f"{kv} KV heads cannot be replicated evenly over TP={tp}")
    elif kv and tp <= kv and kv % tp:
        problems.append(f"{kv} KV heads do not split over TP={tp}")
    notes = []
    if kv and tp > kv and has_qk_norm:
        notes.append(f"TP={tp} > {kv} KV heads with QK norm: k_norm needs a per-rank shard path "
                     "(else `Attempted to load weight ... into parameter ...` at Stage B)")
    return {"tp": tp, "heads_per_rank": heads // tp if heads and not heads % tp else None,
            "kv_replicated": bool(kv and tp > kv), "problems": problems, "notes": notes}


def probe(directory: Path, trust_remote_code: bool, timeout: float, nearest_arch: str = "") -> dict[str, Any]:
    """Run the probe process (the box's own PYTHONPATH: the roots' packages are what it imports).
    Where no one registered the architecture, it builds `nearest_arch` instead."""
    command = [sys.executable, "-m", "helpers.adapt.probe", str(directory)]
    if trust_remote_code:
        command.append("--trust-remote-code")
    if nearest_arch:
        command.append(f"--nearest={nearest_arch}")
    env = dict(os.environ, VLLM_LOGGING_LEVEL="ERROR", TQDM_DISABLE="1")
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"built": False, "why": f"the probe took over {timeout:.0f} s"}
    line = next((l for l in done.stdout.splitlines() if l.startswith(MARKER)), None)
    if line is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"built": False, "why": f"the probe failed: {tail}"}
    return json.loads(line[len(MARKER):])


def classify(answer: dict[str, Any], result: Keymap) -> None:
    for fault in answer.get("faults") or []:
        error = fault["error"]
        if any(word in error for word in SHAPE_WORDS):
            result.shape.append(fault)
        elif "KeyError" in error or "no module or parameter" in error or "loaded by no parameter" in error:
            result.unmapped.append(fault)
        else:
            result.errors.append(fault)
    result.unfilled = list(answer.get("unfilled") or [])


def check(directory: Path, config: dict[str, Any], tp: int = 1, timeout: float = 600.0) -> Keymap:
    started = time.monotonic()
    facts = ckpt.config_facts(config)
    inventory, index = ckpt.take_inventory(directory, config)
    scan = ckpt.scan_headers(directory, inventory.weight_files, index)
    _count, unpaired, _orphans = coverage.fp8_pairing(scan.tensors)
    qk_norm = any(name.endswith("k_norm.weight") for name in scan.tensors)
    trust = bool(config.get("auto_map"))
    # no adapter registered yet: the nearest registered class shows which names it would not take
    ranked = nearest.rank(config, facts, scan.tensors, limit=1)["nearest"] if scan.tensors else []
    answer = probe(directory, trust, timeout, ranked[0]["arch"] if ranked else "") if scan.tensors else \
        {"built": False, "why": "no safetensors tensors"}
    method = "load_weights on meta tensors"
    if answer.get("as_nearest"):
        method = f"load_weights of the nearest registered class {answer['as_nearest']} (no adapter is registered)"
    if answer.get("built"):
        result = Keymap("clean", method, model_class=answer["class"], source=answer["source"],
                        tensors=answer["tensors"])
        result.timings = {k: answer.get(k) for k in ("vllm_import_s", "headers_s", "built_s", "elapsed_s")}
        classify(answer, result)
    else:
        result = Keymap("fallback-clean", "header coverage (transformers, meta device)", why_fallback=answer["why"],
                        tensors=len(scan.tensors))
        covered, _knows, _k_norm = coverage.assessment(config, facts, scan.tensors)
        result.model_class = covered.model_class or ""
        if covered.status == "unknown":
            result.why_fallback += f"; header coverage unknown too ({covered.reason})"
        result.unmapped = [{"key": name, "error": "matches no parameter of the transformers class"}
                           for name in covered.unexpected]
        result.unfilled = list(covered.missing)
        result.shape = [{"key": m["name"], "error": f"checkpoint {m['checkpoint']} vs expected {m['expected']}"}
                        for m in covered.shape_mismatch]
    result.fp8_unpaired = unpaired
    result.tp = tp_sharding(facts, tp, qk_norm)
    if result.unmapped or result.shape or result.errors or result.unfilled or unpaired or result.tp["problems"]:
        result.verdict = result.verdict.replace("clean", "faults")
    result.elapsed_s = round(time.monotonic() - started, 3)
    return result


def made_on(now: status.Now, tp: int) -> dict[str, Any]:
    """What a keymap's answer depends on, as `make status` records a run's context."""
    return {"model_path": now.model_path, "context": {"model": {"fingerprint": now.fingerprint}, "roots": now.roots},
            "versions": now.versions, "tp": tp}


def write(result: Keymap, runs_dir: Path, model_name: str, inputs: dict[str, Any] | None = None) -> Path:
    run_dir = ev.new_run_dir(runs_dir, model_name, "keymap")
    ev.atomic_write_json(run_dir / "keymap.json", result.to_dict() | {"created_utc": ev.utc_iso(), "made_on": inputs})
    ev.point_latest(run_dir, "keymap")
    return run_dir / "keymap.json"


RECENT_KEYMAPS = 20


def _same_roots(recorded: dict[str, Any], today: dict[str, dict[str, Any]]) -> bool:
    """The same roots at the same paths, each a git tree both times or absent both times (HEAD and
    the dirty files' content are then compared by status.stale_reasons)."""
    return set(recorded) == set(today) and all(
        (recorded[name] or {}).get("path") == root["path"] and bool((recorded[name] or {}).get("git")) == bool(root["git"])
        for name, root in today.items())


def _run_order(run_dir: Path) -> tuple[str, int]:
    """<stamp>-keymap, then <stamp>-keymap.1 ... for more runs in the same second (evidence.new_run_dir)."""
    base, _, attempt = run_dir.name.partition(".")
    return base, int(attempt) if attempt.isdigit() else 0


def reusable(runs_dir: Path, model_name: str, now: status.Now, tp: int) -> tuple[Path, Keymap] | None:
    """The newest keymap made on exactly today's checkpoint, roots, versions and TP. A root that
    exists but is not a git tree cannot be compared, and a fallback (the probe did not build) is
    never reused."""
    if any(not root["git"] and Path(root["path"]).exists() for root in now.roots.values()):
        return None
    runs = sorted((p for p in ev.model_runs_dir(runs_dir, model_name).glob("*-keymap*")
                   if not p.is_symlink() and p.name.split(".")[0].endswith("-keymap")), key=_run_order, reverse=True)
    for run_dir in runs[:RECENT_KEYMAPS]:
        try:
            data = ev.read_json(run_dir / "keymap.json")
        except (OSError, ValueError):
            continue
        made = data.get("made_on") if isinstance(data, dict) else None
        if not made or data.get("why_fallback") or made.get("tp") != tp or not made.get("versions"):
            continue
        if not _same_roots((made.get("context") or {}).get("roots") or {}, now.roots):
            continue
        if status.stale_reasons(now, when=data.get("created_utc"), context=made.get("context"),
                                model_path=made.get("model_path"), versions=made.get("versions")):
            continue
        return run_dir / "keymap.json", Keymap.from_dict(data)
    return None


def summary(result: Keymap, limit: int = 8) -> list[str]:
    lines = [f"keymap: {result.verdict} ({result.method}{', ' + result.model_class if result.model_class else ''}; "
             f"{result.tensors} checkpoint tensors, {result.elapsed_s:.1f} s)"]
    if result.why_fallback:
        lines.append(f"  the model could not be built on the meta device: {result.why_fallback}")
    for title, faults in (("taken by no parameter", result.unmapped), ("shape mismatch", result.shape),
                          ("load_weights error", result.errors)):
        if faults:
            lines.append(f"  {len(faults)} checkpoint tensor(s) {title}:")
            lines += [f"    {f['key']}: {f['error']}" for f in faults[:limit]]
    if result.unfilled:
        lines.append(f"  {len(result.unfilled)} parameter(s) no tensor fills: {', '.join(result.unfilled[:limit])}")
    if result.fp8_unpaired:
        lines.append(f"  {len(result.fp8_unpaired)} fp8 weight(s) without a scale: {', '.join(result.fp8_unpaired[:limit])}")
    lines += [f"  TP={result.tp['tp']}: {p}" for p in result.tp.get("problems") or []]
    lines += [f"  TP={result.tp['tp']}: {n}" for n in result.tp.get("notes") or []]
    return lines
