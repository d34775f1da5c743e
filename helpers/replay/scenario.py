"""Scenario files: a recorded vllm-ascend server, split into phases, as data.

A scenario is one YAML file under helpers/replay/scenarios/. Its first line is a comment that
names its sources; every block (and request rule) carries a `source:` (an issue number such as
`vllm-ascend#4807`, or `path@tag` in the vllm-ascend repository). The full schema, with an
example, is in helpers/replay/README.md; in short:

  name, era, summary                 what the scenario is
  extends:    another scenario       its top-level keys are the defaults for this one
  box:        machine, versions, soc_version, modules, markers, source
                                     what the box reports (read by `python -m helpers.replay.box`)
  model:      architecture, max_position_embeddings, default_max_model_len
  kv:         tokens, gib, block_size, source
                                     the KV cache at the recorded settings (capacity, estimates)
  timing:     scale, max_gap         replay seconds per recorded second; cap of one recorded gap
  sigterm:    during_startup (ignore|honour), honour_after
  serving:    reply, ttft_ms, tpot_ms, access_log, error_body
  rewrites:   [{when, pattern, replace, source, why}]  regex edits applied to printed lines
  startup:       [block]             played in order at start
  first_request: [block]             printed once, at the first generation request
  periodic:      [{every, when, lines, source}]  printed while requests are being served
  shutdown:      [block]             printed on SIGTERM after ready, then exit 0
  requests:      [rule]              how generation requests are answered (first match wins)

A block is {id, source, when?, gap?, busy?, lines}. `lines` items are a verbatim line (a string), a
`{template: ...}` line whose {placeholders} are filled in (a real source string that must carry a
computed value), or an action: `{pause: s, busy: bool}`, `{ready: true}` (the port opens),
`{exit: code}`, `{hang: true}` (silent and sleeping forever). A line's timestamp
(`MM-DD HH:MM:SS`) paces it against the previous timestamped line of the same block.

A request rule is {id, source, match: {kind, nth}, when?, lines, reply, status, error, after}:
`reply` is ok | empty | error | stream_error | hang; `after` may kill the engine
(`engine_dead: true`), print more lines and exit (`exit`, `exit_after`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from helpers import load_yaml
from helpers.replay.invocation import ScenarioError, check_condition

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
MACHINES_FILE = Path(__file__).resolve().parent / "machines.yaml"

TOP_KEYS = {"name", "extends", "era", "summary", "box", "model", "kv", "timing", "sigterm", "serving", "rewrites",
            "startup", "first_request", "periodic", "shutdown", "requests"}
BLOCK_KEYS = {"id", "source", "when", "gap", "busy", "lines", "note"}
RULE_KEYS = {"id", "source", "match", "when", "lines", "reply", "status", "error", "after", "note"}
AFTER_KEYS = {"engine_dead", "lines", "exit", "exit_after"}
REPLIES = ("ok", "empty", "error", "stream_error", "hang")
REQUEST_KINDS = ("chat", "chat_stream", "image", "completion", "completion_stream")
BOX_KEYS = {"machine", "versions", "soc_version", "modules", "markers", "source"}
VERSION_KEYS = ("vllm", "vllm-ascend", "torch", "torch-npu", "transformers")
STAMP = re.compile(r"\b(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\b")


@dataclass
class Item:
    kind: str                 # line | template | pause | ready | exit | hang
    text: str = ""
    seconds: float = 0.0
    busy: bool = False
    code: int = 0


@dataclass
class Block:
    id: str
    source: str
    items: list[Item]
    when: dict[str, Any] | None = None
    gap: float = 0.0
    busy: bool = False


@dataclass
class Rule:
    id: str
    source: str
    kinds: tuple[str, ...] = ()
    nth: int | None = None
    when: dict[str, Any] | None = None
    items: list[Item] = field(default_factory=list)
    reply: str = "ok"
    status: int = 500
    error: dict[str, Any] | None = None
    engine_dead: bool = False
    after_items: list[Item] = field(default_factory=list)
    exit_code: int | None = None
    exit_after: float = 0.5


@dataclass
class Periodic:
    every: float
    source: str
    lines: list[Item]
    when: dict[str, Any] | None = None


@dataclass
class Rewrite:
    pattern: re.Pattern
    replace: str
    source: str
    when: dict[str, Any] | None = None


@dataclass
class Scenario:
    name: str
    path: Path
    era: str
    summary: str
    first_line: str
    box: dict[str, Any]
    model: dict[str, Any]
    kv: dict[str, Any]
    timing: dict[str, Any]
    sigterm: dict[str, Any]
    serving: dict[str, Any]
    rewrites: list[Rewrite]
    startup: list[Block]
    first_request: list[Block]
    periodic: list[Periodic]
    shutdown: list[Block]
    requests: list[Rule]

    def all_blocks(self) -> list[Block]:
        return self.startup + self.first_request + self.shutdown


# ----------------------------------------------------------------------------- time stamps
def stamp_seconds(text: str) -> float | None:
    """Seconds since the start of the year (leap years ignored) of a vLLM `MM-DD HH:MM:SS` stamp."""
    match = STAMP.search(text)
    if not match:
        return None
    month, day, hour, minute, second = (int(g) for g in match.groups())
    days_before = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
    if not 1 <= month <= 12:
        return None
    return (((days_before[month - 1] + day) * 24 + hour) * 60 + minute) * 60 + second


# ----------------------------------------------------------------------------- parsing
def _require(mapping: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = set(mapping) - keys
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(keys)})")
    return mapping


def _source(raw: dict[str, Any], where: str) -> str:
    source = str(raw.get("source") or "").strip()
    if not source:
        raise ScenarioError(f"{where}: every block cites its source (`source:` an issue number or file@tag)")
    return source


def _items(raw: Any, where: str) -> list[Item]:
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: lines is a list")
    items: list[Item] = []
    for index, entry in enumerate(raw):
        at = f"{where}[{index}]"
        if isinstance(entry, str):
            # A literal block (`- |`) holds several verbatim lines: pasted logs stay byte-exact.
            for line in entry.rstrip("\n").split("\n"):
                items.append(Item("line", text=line))
        elif isinstance(entry, dict) and len(entry) >= 1:
            if "template" in entry:
                _require(entry, {"template", "source"}, at)
                if not str(entry.get("source") or "").strip():
                    raise ScenarioError(f"{at}: a template line cites the real string it fills in (`source:`)")
                items.append(Item("template", text=str(entry["template"])))
            elif "pause" in entry:
                _require(entry, {"pause", "busy", "why"}, at)
                items.append(Item("pause", seconds=float(entry["pause"]), busy=bool(entry.get("busy", False))))
            elif "ready" in entry:
                items.append(Item("ready"))
            elif "exit" in entry:
                items.append(Item("exit", code=int(entry["exit"])))
            elif "hang" in entry:
                _require(entry, {"hang", "why"}, at)
                items.append(Item("hang"))
            else:
                raise ScenarioError(f"{at}: unknown line item {sorted(entry)}")
        else:
            raise ScenarioError(f"{at}: a line is a string or one of template/pause/ready/exit/hang")
    return items


def _blocks(raw: Any, where: str) -> list[Block]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: expected a list of blocks")
    blocks = []
    for index, entry in enumerate(raw):
        at = f"{where}[{index}]"
        _require(entry, BLOCK_KEYS, at)
        check_condition(entry.get("when"), at)
        blocks.append(Block(id=str(entry.get("id") or f"{where}-{index}"), source=_source(entry, at),
                            items=_items(entry.get("lines", []), at), when=entry.get("when"),
                            gap=float(entry.get("gap", 0.0)), busy=bool(entry.get("busy", False))))
    return blocks


def _rules(raw: Any) -> list[Rule]:
    rules = []
    for index, entry in enumerate(raw or []):
        at = f"requests[{index}]"
        _require(entry, RULE_KEYS, at)
        check_condition(entry.get("when"), at)
        match = _require(entry.get("match") or {}, {"kind", "nth"}, at + ".match")
        kinds = match.get("kind") or ()
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        for kind in kinds:
            if kind not in REQUEST_KINDS:
                raise ScenarioError(f"{at}: unknown request kind {kind!r} (known: {REQUEST_KINDS})")
        reply = str(entry.get("reply", "ok"))
        if reply not in REPLIES:
            raise ScenarioError(f"{at}: reply must be one of {REPLIES}")
        after = _require(entry.get("after") or {}, AFTER_KEYS, at + ".after")
        rules.append(Rule(
            id=str(entry.get("id") or f"rule-{index}"), source=_source(entry, at), kinds=kinds,
            nth=match.get("nth"), when=entry.get("when"), items=_items(entry.get("lines", []), at),
            reply=reply, status=int(entry.get("status", 500)), error=entry.get("error"),
            engine_dead=bool(after.get("engine_dead", False)),
            after_items=_items(after.get("lines", []), at + ".after"),
            exit_code=after.get("exit"), exit_after=float(after.get("exit_after", 0.5))))
    return rules


def _periodic(raw: Any) -> list[Periodic]:
    result = []
    for index, entry in enumerate(raw or []):
        at = f"periodic[{index}]"
        _require(entry, {"every", "when", "lines", "source", "note"}, at)
        check_condition(entry.get("when"), at)
        result.append(Periodic(every=float(entry.get("every", 10)), source=_source(entry, at),
                               lines=_items(entry.get("lines", []), at), when=entry.get("when")))
    return result


def _rewrites(raw: Any) -> list[Rewrite]:
    result = []
    for index, entry in enumerate(raw or []):
        at = f"rewrites[{index}]"
        _require(entry, {"when", "pattern", "replace", "source", "why"}, at)
        check_condition(entry.get("when"), at)
        try:
            pattern = re.compile(entry["pattern"])
        except (KeyError, re.error) as exc:
            raise ScenarioError(f"{at}: bad pattern: {exc}") from None
        result.append(Rewrite(pattern=pattern, replace=str(entry.get("replace", "")), source=_source(entry, at),
                              when=entry.get("when")))
    return result


def resolve(name_or_path: str) -> Path:
    """A scenario name (file stem under scenarios/) or a path to a YAML file."""
    if not name_or_path:
        raise ScenarioError("REPLAY_SCENARIO is not set: name a scenario under helpers/replay/scenarios/ or give a path")
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if candidate.is_file():
            return candidate
        raise ScenarioError(f"scenario file not found: {name_or_path}")
    path = SCENARIO_DIR / f"{name_or_path}.yaml"
    if path.is_file():
        return path
    known = ", ".join(available())
    raise ScenarioError(f"unknown scenario {name_or_path!r} (known: {known})")


def available() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def _raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping, with `extends:` resolved: the base's top-level keys, overridden by
    the keys this file sets (a whole key at a time: lists are replaced, not merged)."""
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path.name}: not valid YAML: {str(exc).splitlines()[0]}") from None
    _require(raw, TOP_KEYS, path.name)
    base_name = raw.get("extends")
    if not base_name:
        return raw
    base_path = resolve(str(base_name))
    if base_path in seen or base_path == path:
        raise ScenarioError(f"{path.name}: `extends` loops through {base_path.name}")
    merged = dict(_raw(base_path, seen + (path,)))
    merged.pop("name", None)
    merged.update({k: v for k, v in raw.items() if k != "extends"})
    return merged


def load(name_or_path: str) -> Scenario:
    path = resolve(name_or_path)
    text = path.read_text(encoding="utf-8")
    raw = _raw(path)
    first_line = text.splitlines()[0] if text else ""
    box = _require(raw.get("box") or {}, BOX_KEYS, "box")
    kv = _require(raw.get("kv") or {}, {"tokens", "gib", "block_size", "source", "note"}, "kv")
    if kv and not ("tokens" in kv and "gib" in kv):
        raise ScenarioError(f"{path.name}: kv needs tokens and gib")
    try:
        return Scenario(
            name=str(raw.get("name") or path.stem), path=path, era=str(raw.get("era", "")),
            summary=str(raw.get("summary", "")).strip(), first_line=first_line, box=box,
            model=_require(raw.get("model") or {}, {"architecture", "max_position_embeddings",
                                                   "default_max_model_len", "moe", "num_experts", "shared_experts",
                                                   "multimodal", "mtp"}, "model"),
            kv=kv,
            timing=_require(raw.get("timing") or {}, {"scale", "max_gap"}, "timing"),
            sigterm=_require(raw.get("sigterm") or {}, {"during_startup", "honour_after", "source"}, "sigterm"),
            serving=_require(raw.get("serving") or {}, {"reply", "ttft_ms", "tpot_ms", "access_log", "error_body",
                                                        "source"}, "serving"),
            rewrites=_rewrites(raw.get("rewrites")),
            startup=_blocks(raw.get("startup"), "startup"),
            first_request=_blocks(raw.get("first_request"), "first_request"),
            periodic=_periodic(raw.get("periodic")),
            shutdown=_blocks(raw.get("shutdown"), "shutdown"),
            requests=_rules(raw.get("requests")),
        )
    except ScenarioError as exc:
        raise ScenarioError(f"{path.name}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{path.name}: {exc}") from None


def machines() -> dict[str, Any]:
    """Named machines (npu-smi text, SoC) shared by scenarios: helpers/replay/machines.yaml."""
    raw = load_yaml(MACHINES_FILE.read_text(encoding="utf-8")) or {}
    return raw.get("machines") or {}
