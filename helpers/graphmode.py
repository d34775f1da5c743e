"""Which graph mode a serve command runs in, and what proves it ran (the profile's `graph:` data).

The default mode of a profile (ACLGraph on ascend) is proven by its evidence keys, on ascend
only after the first request (`Replaying aclgraph` is logged on the first replay): a startup
capture line proves nothing. Other modes are chosen by the serve command (`graph.modes`, first
match wins): eager and cudagraph_mode NONE expect nothing; XliteGraph, torchair graph mode
(vllm-ascend < 0.12.0rc1) and Model Runner V2 before v0.17 log no line per request, so their
startup lines are the evidence (each rule names its fact in helpers/ascend_facts.yaml).

Also here: the context-parallel size of a command (FULL graphs are not recommended there) and
whether the box is a soft-partitioned NPU (PIECEWISE capture is unsupported there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from helpers import ascend_build, ascend_facts
from helpers.catalog import load_catalog

EXPECTS = ("replay", "startup", "none")
# cudagraph_mode values that capture PIECEWISE graphs (1 = CUDAGraphMode.PIECEWISE); unset means
# vLLM's default, which captures PIECEWISE graphs on every version (PIECEWISE or FULL_AND_PIECEWISE)
PIECEWISE_MODES = {"PIECEWISE", "FULL_AND_PIECEWISE", "1"}
Versions = Mapping[str, "str | ascend_build.Build | None"]
SourceProbe = Callable[[str, str], "bool | None"]


@dataclass
class GraphMode:
    id: str                   # default, or the id of a `graph.modes` entry
    name: str
    expects: str              # replay | startup | none
    evidence: list[str]
    because: str = ""
    fact: str | None = None
    category: str = ""
    hint_zh: str = ""
    hint_en: str = ""
    notes: list[str] = field(default_factory=list)


# --- reading a command ---------------------------------------------------------------------------

def flag_value(argv: list[str], flag: str) -> str | bool | None:
    """The value of the last `--flag value` / `--flag=value`; True for a flag given alone."""
    found: str | bool | None = None
    for index, arg in enumerate(argv):
        if arg == flag:
            nxt = argv[index + 1] if index + 1 < len(argv) else None
            found = nxt if nxt is not None and not nxt.startswith("--") else True
        elif arg.startswith(flag + "="):
            found = arg[len(flag) + 1:]
    return found


def json_key(argv: list[str], flag: str, dotted: str) -> tuple[bool, Any]:
    """(present, value) of a dotted key in a flag's JSON value (`a.b` -> value["a"]["b"])."""
    raw = flag_value(argv, flag)
    if not isinstance(raw, str):
        return False, None
    try:
        value: Any = json.loads(raw)
    except ValueError:
        return False, None
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _holds(when: dict[str, Any], argv: list[str], env: dict[str, str], versions: Versions,
           source_contains: SourceProbe | None = None) -> bool:
    for key, expected in when.items():
        if key == "flag":
            if flag_value(argv, str(expected)) is None:
                return False
        elif key == "json":
            present, value = json_key(argv, expected["flag"], expected["key"])
            if not present:
                return False
            if "equals" in expected and value != expected["equals"]:
                return False
            if "in" in expected and value not in expected["in"] and str(value) not in map(str, expected["in"]):
                return False
        elif key == "env":
            if any(env.get(name) != str(value) for name, value in expected.items()):
                return False
        elif key == "fact":
            fact = ascend_facts.get(str(expected))
            # the installed source decides first (a build between releases reports an old number);
            # an unknown version cannot refute the mode the command asked for
            if fact.decide(versions.get(fact.package or "vllm-ascend"), source_contains)[0] is False:
                return False
        else:
            raise ValueError(f"graph mode condition {key!r} is unknown (flag, json, env, fact)")
    return True


def select(graph: dict[str, Any], argv: list[str], env: dict[str, str],
           versions: Versions, source_contains: SourceProbe | None = None) -> GraphMode:
    """The graph mode of this command on this box (`source_contains`: the box's source probe)."""
    for entry in graph.get("modes") or []:
        if entry.get("expects") not in EXPECTS:
            raise ValueError(f"graph mode {entry.get('id')!r}: expects must be one of {EXPECTS}")
        if _holds(entry.get("when") or {}, argv, env, versions, source_contains):
            return GraphMode(
                id=str(entry["id"]), name=str(entry.get("name") or graph.get("name") or "graph"),
                expects=str(entry["expects"]), evidence=list(entry.get("evidence") or []),
                because=str(entry.get("because") or ""), fact=entry.get("fact"),
                category=str(entry.get("category") or "graph-mode-not-active"),
                hint_zh=str(entry.get("hint_zh") or graph.get("hint_zh") or ""),
                hint_en=str(entry.get("hint_en") or graph.get("hint_en") or ""))
    expects = "replay" if graph.get("after_first_request") else "startup"
    return GraphMode(id="default", name=str(graph.get("name") or "graph"), expects=expects,
                     evidence=list(graph.get("evidence") or []), category=str(graph.get("category") or ""),
                     hint_zh=str(graph.get("hint_zh") or ""), hint_en=str(graph.get("hint_en") or ""))


# --- judging a log -------------------------------------------------------------------------------

def _wanted(keys: list[str]) -> str:
    catalog = load_catalog()
    return " or ".join(repr(p.pattern) for key in keys for p in catalog.evidence_patterns(key))


def found(mode: GraphMode, evidence: dict[str, Any], lines: dict[str, int], after_line: int) -> str | None:
    """The first evidence key of the mode the log shows (after `after_line` for a replay)."""
    for key in mode.evidence:
        if evidence.get(key) and (mode.expects != "replay" or (lines.get(key) or 0) > after_line):
            return key
    return None


def judge(mode: GraphMode, evidence: dict[str, Any], lines: dict[str, int], after_line: int) -> dict[str, Any]:
    """The graph record of a run: status PASS / FAIL / NOT_APPLICABLE with the line that says so."""
    record: dict[str, Any] = {"name": mode.name, "mode": mode.id, "expects": mode.expects, "fact": mode.fact}
    if mode.expects == "none":
        key = next((k for k in mode.evidence if evidence.get(k)), None)
        return {**record, "status": "NOT_APPLICABLE", "reason": mode.because,
                "line": evidence.get(key) if key else None, "line_no": lines.get(key) if key else None}
    key = found(mode, evidence, lines, after_line)
    if key:
        reason = (f"after the first request (serve.log line {after_line})" if mode.expects == "replay"
                  else mode.because or "startup evidence")
        return {**record, "status": "PASS", "key": key, "line": evidence[key], "line_no": lines.get(key),
                "reason": reason}
    if mode.expects == "replay":
        reason = f"no {_wanted(mode.evidence)} line after the first request (serve.log line {after_line})"
        capture = evidence.get("graph_capture")
        if capture:
            reason += f"; the startup capture (line {lines.get('graph_capture')}) alone does not prove graphs were used"
    else:
        reason = f"{mode.name} was asked for but serve.log has no {_wanted(mode.evidence)} line ({mode.because})"
    return {**record, "status": "FAIL", "line": evidence.get("graph_capture"), "line_no": lines.get("graph_capture"),
            "reason": reason, "category": mode.category, "hint_zh": mode.hint_zh, "hint_en": mode.hint_en}


# --- context parallel and soft-partitioned NPUs ----------------------------------------------------

def context_parallel_size(args: dict[str, Any] | list[str]) -> int:
    """prefill_context_parallel_size x decode_context_parallel_size of a command (argv) or of the
    `non-default args` the server logged (fact cp-no-full-cudagraph)."""
    size = 1
    for name in ("prefill_context_parallel_size", "decode_context_parallel_size"):
        if isinstance(args, dict):
            value: Any = args.get(name)
        else:
            value = flag_value(args, "--" + name.replace("_", "-"))
        try:
            size *= max(1, int(value)) if value not in (None, True) else 1
        except (TypeError, ValueError):
            pass
    return size


def captures_piecewise(argv: list[str]) -> bool:
    """Does this command capture PIECEWISE graphs (vLLM's default cudagraph_mode does)?"""
    present, value = json_key(argv, "--compilation-config", "cudagraph_mode")
    return not present or str(value).upper() in PIECEWISE_MODES


FULL_MODES = {"FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE", "2"}  # every mode that captures full graphs


def full_under_context_parallel(argv: list[str]) -> str:
    """The warning before a start whose own command asks for FULL graphs under context parallel
    ('' otherwise): the graph mode guide does not support it (fact cp-no-full-cudagraph)."""
    present, value = json_key(argv, "--compilation-config", "cudagraph_mode")
    size = context_parallel_size(argv)
    if not present or size <= 1 or str(value).upper() not in FULL_MODES:
        return ""
    return (f"cudagraph_mode {value} with context parallel size {size}: FULL graphs are not supported under "
            "context parallel (fact cp-no-full-cudagraph); use PIECEWISE "
            "(--compilation-config '{\"cudagraph_mode\":\"PIECEWISE\"}') or --enforce-eager")


def soft_partition(spec: dict[str, Any], view: dict[str, Any]) -> str:
    """What shows this box is a soft-partitioned NPU ('' when nothing does): the partition
    runtime named in /etc/ld.so.preload, or its library mounted (fact soft-partition-vcann-rt-view)."""
    preload = str(view.get("ld_so_preload") or "")
    for name in spec.get("preload_names") or []:
        if name in preload:
            return f"/etc/ld.so.preload names {name} ({preload.strip().splitlines()[0][:120]})"
    present = set(view.get("files") or [])
    for path in spec.get("files") or []:
        if path in present:
            return f"{path} is mounted"
    return ""


def soft_partition_warning(seen: str, cp_size: int = 1) -> str:
    """The warning before a run that would capture PIECEWISE graphs on a soft-partitioned NPU."""
    if cp_size > 1:  # FULL graphs are not recommended with context parallel either
        instead = f"--enforce-eager (context parallel size {cp_size}: no FULL graphs either, fact cp-no-full-cudagraph)"
    else:
        instead = "--compilation-config '{\"cudagraph_mode\":\"FULL_DECODE_ONLY\"}' or --enforce-eager"
    return (f"soft-partitioned NPU ({seen}): PIECEWISE graph capture is unsupported here (fact "
            f"soft-partition-piecewise-unsupported: vllm-ascend budgets capture for the whole device's streams, "
            f"this container has a share of them); serve with {instead}, or expect stream exhaustion during capture")
