"""`make ladder`: the workflow's fallback ladder, rung by rung, until one passes.

Rungs are data (helpers/ladder.yaml). Each rung is a normal stage run (step `ladder-<rung>`) with
its own evidence. The summary (stdout and RUNS_DIR/<model>/<stamp>-ladder/ladder.json, linked as
latest-ladder) says which rung fixed the failure, whether the first failure reproduced with the
same signature, and whether the failure moved between rungs (e.g. from the processor to the
model core).
"""

from __future__ import annotations

import re
import shlex
import textwrap
from dataclasses import replace
from typing import Any, Callable

from helpers import evidence as ev
from helpers import profiles
from helpers.errors import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS
from helpers.features import GateSpec, LadderSpec, Rung, load_ladder, load_specs
from helpers.model import Model
from helpers.plan import Variant
from helpers.settings import Settings
from helpers.stage import StageRequest, StageRun
from helpers.triage import current_facts
from helpers.catalog import load_catalog
from helpers.verdict.nextstep import merge_args, quote_word, split_words
from helpers.verdict.proof import apply_feature_check

# a passing fallback rung -> the ACCEPT_FALLBACK value that signs off in its mode
ACCEPTS = {"eager": "eager", "dynamo-disable": "dynamo", "xlite": "xlite"}
# argv words that differ between two starts of the same command
VOLATILE_FLAGS = ("--port", "--host")


def rung_gate_check(spec: GateSpec) -> Callable[[StageRun], None]:
    """A passing rung whose switch the log does not show is not the rung that fixed anything: its
    gate's evidence check (feature_evidence, or FAIL feature-not-active) applies to it too."""
    def check(stage_run: StageRun) -> None:
        assert stage_run.run_dir is not None
        apply_feature_check(spec, stage_run.record, stage_run.run_dir / "serve.log")
    return check

def shorten(text: str, width: int = 160) -> str:
    """Cut at a word boundary with an ellipsis, never mid-word."""
    return textwrap.shorten(str(text or ""), width=width, placeholder=" ...")

# --- signatures ---------------------------------------------------------------------------------

def signature_of(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What identifies a failure across runs (pids and timestamps differ; these do not)."""
    if not record or record.get("verdict") in (None, "PASS"):
        return None
    cause = record.get("root_cause") or {}
    text = str(cause.get("text") or "")
    # Drop the vLLM prefix `(Worker pid=N) ERROR MM-DD HH:MM:SS [file:line]` so equal causes compare equal.
    text = re.sub(r"^\(\S+ pid=\d+\) [A-Z]+ \d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \[[^\]]*\] ?", "", text).strip()
    return {"category": record.get("category"), "sig_id": cause.get("sig_id"),
            "exception": cause.get("exception"), "text": text[:300]}


def same_signature(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    keys = ("category", "sig_id", "exception")
    if any(a.get(k) != b.get(k) for k in keys):
        return False
    return a.get("sig_id") is not None or a.get("text") == b.get("text")


def describe(sig: dict[str, Any] | None) -> str:
    if sig is None:
        return "no failure"
    what = sig.get("sig_id") or sig.get("exception") or "unknown cause"
    return f"[{sig.get('category')}] {what}: {sig.get('text') or ''}".strip()


def dynamo_related(records: list[dict[str, Any]], pattern: re.Pattern) -> str:
    """The line that makes a failure dynamo-related ('' when none does)."""
    for record in records:
        for hit in record.get("signatures") or []:
            if hit.get("rung") == "dynamo-disable":
                return str(hit.get("text") or hit.get("sig_id"))
        cause = record.get("root_cause") or {}
        for text in (cause.get("text"), cause.get("exception"), record.get("reason")):
            if text and pattern.search(str(text)):
                return str(text)
    return ""


def rung_applies(rung: Rung, *, multimodal: bool, failed: list[dict[str, Any]], spec: LadderSpec,
                 dynamo_mode: str, assessments: dict[str, dict[str, Any]] | None = None) -> tuple[bool, str]:
    if rung.when == "always":
        return True, "always"
    if rung.when == "supported":
        found = (assessments or {}).get(rung.feature or "")
        if found is None:
            return False, f"triage has no assessment of {rung.feature}"
        if found.get("category") != "supported":
            return False, f"{found.get('verdict')}: {found.get('evidence')}"
        return True, f"{found.get('name')} is supported here: {found.get('evidence')}"
    if rung.when == "graph-fault":
        graphs = {c for cats in load_catalog().graph_categories.values() for c in cats}
        hit = next((r for r in failed if r.get("category") in graphs), None)
        return ((True, f"graph fault: [{hit.get('category')}] on {hit.get('step')}") if hit else
                (False, "no failing rung died capturing or replaying graphs"))
    if rung.when == "multimodal":
        return (True, "multimodal model") if multimodal else (False, "text-only model: no multimodal path to isolate")
    if dynamo_mode == "always":
        return True, "LADDER_DYNAMO=always"
    line = dynamo_related(failed, spec.dynamo_related)
    if line:
        return True, f"dynamo-related failure: {line[:160]}"
    return False, "the failure is not dynamo-related (set LADDER_DYNAMO=always to try it anyway)"


# --- the run ------------------------------------------------------------------------------------

def _command(record: dict[str, Any] | None) -> tuple[list[str], dict[str, str]]:
    command = (record or {}).get("command") or {}
    argv = list(command.get("argv") or [])
    for flag in VOLATILE_FLAGS:
        if flag in argv and argv.index(flag) + 1 < len(argv):
            del argv[argv.index(flag):argv.index(flag) + 2]
    return argv, dict(command.get("env") or {})


def command_difference(original: dict[str, Any] | None, reproduce: dict[str, Any] | None) -> str:
    """'' when the reproduce rung ran the earlier run's argv and env (port aside), else what differs."""
    if not original or not reproduce or not original.get("command") or not reproduce.get("command"):
        return ""
    (argv_a, env_a), (argv_b, env_b) = _command(original), _command(reproduce)
    parts = []
    if argv_a != argv_b:
        only_a = [w for w in argv_a if w not in argv_b]
        only_b = [w for w in argv_b if w not in argv_a]
        parts.append(f"argv: earlier {shlex.join(only_a) or '(same words, other order)'}; now {shlex.join(only_b) or '-'}")
    changed = sorted(k for k in set(env_a) | set(env_b) if env_a.get(k) != env_b.get(k))
    if changed:
        parts.append("env: " + ", ".join(changed))
    return shorten("; ".join(parts), 240)


def summarise(summary: dict[str, Any]) -> None:
    """Fill fixed_by, deterministic and moved from the rung rows (pure; used after every rung)."""
    ran = [r for r in summary["rungs"] if r.get("verdict") not in (None, "SKIPPED")]
    passed = next((r for r in ran if r["verdict"] == "PASS"), None)
    isolation = bool(passed and passed.get("isolates"))
    summary["fixed_by"] = passed["rung"] if passed and not isolation else None
    summary["isolated_by"] = ({"rung": passed["rung"], "isolates": passed["isolates"]} if isolation else None)
    reproduce = next((r for r in ran if r["rung"] == "reproduce"), None)
    original = summary.get("original")
    differs = command_difference(original, reproduce)
    if differs and original is not None and original.get("signature") is not None:
        summary["deterministic"] = None
        summary["deterministic_note"] = f"not compared: the reproduce rung ran another command than {original['run_dir']} ({differs})"
    elif original is None or original.get("signature") is None or reproduce is None:
        summary["deterministic"] = None
        summary["deterministic_note"] = ("no earlier failing run of this stage to compare with" if original is None
                                         or original.get("signature") is None else "the reproduce rung did not run")
    elif reproduce["verdict"] == "PASS":
        summary["deterministic"] = False
        summary["deterministic_note"] = "the same command passed on the reproduce rung: the failure is not deterministic"
    else:
        same = same_signature(original["signature"], reproduce["signature"])
        summary["deterministic"] = same
        summary["deterministic_note"] = ("same signature as " + original["run_dir"] if same else
                                         f"different signature: {describe(original['signature'])} then "
                                         f"{describe(reproduce['signature'])}")
    moves = []
    failing = [r for r in ran if r["verdict"] != "PASS"]
    for before, after in zip(failing, failing[1:]):
        if not same_signature(before["signature"], after["signature"]):
            moves.append({"from_rung": before["rung"], "to_rung": after["rung"],
                          "from": describe(before["signature"]), "to": describe(after["signature"])})
    summary["moved"] = moves
    # the rung that passed after failing ones: the failure is gone with its switch
    last_failure = failing[-1] if passed and failing else None
    summary["moved_away"] = ({"rung": passed["rung"], "from_rung": last_failure["rung"],
                              "from": describe(last_failure["signature"])} if last_failure else None)


def render_summary(summary: dict[str, Any]) -> str:
    lines = [f"ladder {summary['model']} (stage {summary['stage'].upper()}):"]
    for row in summary["rungs"]:
        if row["verdict"] == "SKIPPED":
            lines.append(f"  {row['rung']:15s} skipped: {shorten(row['reason'])}")
            continue
        text = f"  {row['rung']:15s} {row['verdict']}"
        if row["verdict"] != "PASS":
            text += f" {shorten(describe(row['signature']))}"
        lines.append(text + f"\n  {'':15s} evidence: {row['run_dir']}")
    isolated = summary.get("isolated_by")
    if summary["fixed_by"]:
        lines.append(f"fixed by rung: {summary['fixed_by']}")
    elif isolated:
        lines.append(f"isolated to {isolated['isolates']} by rung {isolated['rung']} (an isolation, not a fix)")
    else:
        lines.append("no rung passed: map the signature to a known-good implementation and patch minimally")
    deterministic = {True: "yes", False: "no", None: "not decided"}[summary["deterministic"]]
    lines.append(f"deterministic: {deterministic} ({summary['deterministic_note']})")
    away = summary.get("moved_away")
    if away:
        lines.append(f"failure moved away at rung {away['rung']}: {shorten(away['from'])} (seen on {away['from_rung']}) "
                     f"does not occur with the {away['rung']} switch")
    for move in summary["moved"]:
        lines.append(f"failure moved: {move['from_rung']} {shorten(move['from'], 120)} -> {move['to_rung']} "
                     f"{shorten(move['to'], 120)}")
    if summary.get("next"):
        lines.append(f"next: {summary['next']}")
    if not summary["moved"] and len([r for r in summary["rungs"] if r["verdict"] not in ("PASS", "SKIPPED")]) > 1:
        lines.append("failure moved: no (the same signature on every failing rung)")
    return "\n".join(lines)


def ladder_next(summary: dict[str, Any], settings: Settings, model: Model) -> str:
    """The ladder's one next step: accept the fallback that passed (or fix graph mode), fix what an
    isolation rung isolated, or the last failing rung's own next command."""
    summarise(summary)
    arg = f"MODEL={shlex.quote(model.requested or model.name)}"
    carried = " ".join(f"{k}={quote_word(v)}" for k, v in settings.given.items() if k not in ("MODEL", "STAGE"))
    fixed, isolated = summary.get("fixed_by"), summary.get("isolated_by")
    if fixed in ACCEPTS:
        return (f"graph mode fails and {fixed} serves: fix graph mode, or sign off in that mode with "
                f"ACCEPT_FALLBACK={ACCEPTS[fixed]} make report {arg} {carried}".rstrip())
    if fixed:
        flags = next((r["variant"]["flags"] for r in summary["rungs"] if r["rung"] == fixed), [])
        extra = " ".join(quote_word(w) for w in merge_args(split_words(settings.extra_args), list(flags)))
        return f"EXTRA_ARGS={quote_word(extra)} make stage-b {arg} {carried}".rstrip() if flags else ""
    if isolated:
        return (f"fix {isolated['isolates']} (the failure is there); {isolated['rung']} never signs off, "
                f"then make stage-b {arg} {carried}".rstrip())
    failing = [r for r in summary["rungs"] if r.get("verdict") not in (None, "SKIPPED", "PASS")]
    return str(failing[-1].get("next_command") or "") if failing else ""


def run_ladder(settings: Settings, model: Model, out: Callable[[str], None] | None = None,
               spec: LadderSpec | None = None) -> tuple[int, dict[str, Any]]:
    out = out or (lambda line: print(line, flush=True))
    spec = spec or load_ladder()
    dynamo_mode = settings.ladder_dynamo
    multimodal = model.multimodal
    name = model.name
    first = ev.read_latest(model.runs_dir, f"stage-{settings.stage}")
    original = None
    if first is not None:
        original = {"step": first.get("step"), "run_dir": first.get("run_dir"), "verdict": first.get("verdict"),
                    "signature": signature_of(first), "command": first.get("command")}
    summary_dir = ev.new_run_dir(settings.runs_dir, name, "ladder")
    summary: dict[str, Any] = {"schema": 1, "status": "running", "model": name, "model_path": str(model.checkpoint),
                               "stage": settings.stage, "multimodal": multimodal, "dynamo_mode": dynamo_mode,
                               "started_at": ev.utc_iso(), "finished_at": None, "original": original,
                               "rungs": [], "fixed_by": None, "deterministic": None, "deterministic_note": "",
                               "moved": [], "run_dir": str(summary_dir)}
    records: list[dict[str, Any]] = []
    code = EXIT_FAIL
    assessments: dict[str, dict[str, Any]] = {}
    if any(r.when == "supported" for r in spec.rungs):
        assessments = current_facts(settings, model, settings.backend or profiles.detect_backend(), out).assessments

    gate_specs = load_specs()

    def save() -> None:
        summarise(summary)
        ev.atomic_write_json(summary_dir / "ladder.json", summary)

    save()
    if original and original["verdict"] == "FAIL":
        out(f"ladder: earlier {original['step']} failed: {describe(original['signature'])[:160]}")
    try:
        for rung in spec.rungs:
            failed = [r for r in records if r.get("verdict") != "PASS"]
            applies, why = rung_applies(rung, multimodal=multimodal, failed=failed, spec=spec,
                                        dynamo_mode=dynamo_mode, assessments=assessments)
            variant = rung.variant
            if rung.feature and applies:  # a feature's switch as triage assessed it for this box
                found = assessments[rung.feature]
                variant = Variant(name=rung.id, flags=list(found.get("flags") or []), env=dict(found.get("env") or {}))
            if not applies:
                summary["rungs"].append({"rung": rung.id, "step": f"ladder-{rung.id}", "verdict": "SKIPPED",
                                         "category": None, "run_dir": None, "signature": None, "reason": why})
                save()
                continue
            out(f"ladder rung {rung.id}: {rung.why}")
            rung_settings = settings
            if rung.flags:  # the rung's switch merged into EXTRA_ARGS: each flag once
                merged = merge_args(split_words(settings.extra_args), list(rung.flags))
                rung_settings = replace(settings, extra_args=" ".join(quote_word(w) for w in merged))
                variant = Variant(name=rung.id, flags=[], env={})
            # one summary speaks for the ladder: no rung prints its own next step
            run = StageRun(rung_settings, model, StageRequest(step=f"ladder-{rung.id}", stage=settings.stage,
                                                              variant=variant, make_target=f"stage-{settings.stage}",
                                                              quiet_next=True), out=out)
            if rung.gate:  # the rung's switch proven in its own log, as its gate proves it (make eager ...)
                run.post_check = rung_gate_check(gate_specs[rung.gate])
            rung_code = run.run()
            record = run.record
            records.append(record)
            summary["rungs"].append({"rung": rung.id, "step": f"ladder-{rung.id}", "verdict": record.get("verdict"),
                                     "category": record.get("category"), "run_dir": record.get("run_dir"),
                                     "signature": signature_of(record), "reason": record.get("reason"),
                                     "variant": {"flags": variant.flags or list(rung.flags), "env": variant.env},
                                     "applies_because": why, "isolates": rung.isolates or None,
                                     "command": record.get("command"),
                                     "next_command": (record.get("diagnosis") or {}).get("next_command")})
            save()
            if rung_code == EXIT_INTERRUPTED:
                code = EXIT_INTERRUPTED
                break
            if record.get("verdict") == "PASS":
                code = EXIT_PASS
                break
    finally:
        summary["next"] = ladder_next(summary, settings, model)
        summary["status"] = "done" if code != EXIT_INTERRUPTED else "interrupted"
        summary["finished_at"] = ev.utc_iso()
        save()
        ev.point_latest(summary_dir, "ladder")
    out(render_summary(summary) + f"\nladder.json: {summary_dir / 'ladder.json'}")
    summary["records"] = records
    return code, summary
