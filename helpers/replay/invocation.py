"""What the replay server was started with (argv + environment) and the condition language the
scenarios use to react to it.

Conditions (a mapping; all its keys must hold):
  flag: --enforce-eager                       the flag is on the command line (any value)
  flag_value: {flag: --tensor-parallel-size, equals|in|gt|lt: ...}
                                              the flag's plain value (numbers compare as numbers)
  flag_json: {flag: --additional-config, key: enable_flashcomm1, equals|in: ..., present: true}
                                              a key of the flag's JSON value
  env: {VLLM_ASCEND_ENABLE_FLASHCOMM1: "1"}    the variable equals the value ("*": set, any value)
  env_unset: NAME                             the variable is not set at all
  max_model_len_above_budget: true|false      --max-model-len does not fit the scenario's KV cache
  mm_all_zero: true|false                     --limit-mm-per-prompt limits every modality to 0
  any: [cond, ...] / all: [cond, ...] / not: cond
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

CONDITION_KEYS = ("flag", "flag_value", "flag_json", "env", "env_unset", "max_model_len_above_budget",
                  "mm_all_zero", "any", "all", "not")
COMPARATORS = ("equals", "in", "gt", "lt", "present")


class ScenarioError(Exception):
    """A scenario that cannot be used: reported as one line, exit 2."""


def _normal_flag(name: str) -> str:
    # vLLM accepts --max_model_len and --max-model-len alike.
    return "--" + name[2:].replace("_", "-")


def parse_length(text: str) -> int:
    """vLLM's human-readable lengths: 128k = 128000, 128K = 131072 (and m/M, g/G)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", str(text).strip())
    if not match:
        raise ValueError(f"not a length: {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    factor = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}[unit]
    return int(number * factor)


@dataclass
class Invocation:
    """argv of `vllm serve`-style flags and the process environment."""

    model: str
    flags: dict[str, Any]
    env: Mapping[str, str]
    order: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, argv: list[str], env: Mapping[str, str]) -> "Invocation":
        flags: dict[str, Any] = {}
        order: list[str] = []
        positional: list[str] = []
        index = 0
        while index < len(argv):
            arg = argv[index]
            if arg.startswith("--"):
                name, eq, value = arg.partition("=")
                name = _normal_flag(name)
                if not eq:
                    nxt = argv[index + 1] if index + 1 < len(argv) else None
                    if nxt is not None and not nxt.startswith("--"):
                        value, index = nxt, index + 1
                    else:
                        value = True
                flags[name] = value
                if name not in order:
                    order.append(name)
            else:
                positional.append(arg)
            index += 1
        model = str(flags.pop("--model", "") or (positional[0] if positional else ""))
        order = [name for name in order if name != "--model"]
        if not model:
            raise ScenarioError("no model given: pass --model PATH (or the path as the first argument)")
        return cls(model=model, flags=flags, env=dict(env), order=order)

    # ------------------------------------------------------------------ typed views of the flags
    def value(self, flag: str, default: Any = None) -> Any:
        return self.flags.get(_normal_flag(flag), default)

    def has(self, flag: str) -> bool:
        return _normal_flag(flag) in self.flags

    def json_value(self, flag: str) -> dict[str, Any]:
        raw = self.value(flag)
        if raw in (None, True):
            return {}
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise ScenarioError(f"{flag} is not valid JSON: {str(raw)[:80]}") from None
        return parsed if isinstance(parsed, dict) else {}

    @property
    def served_name(self) -> str:
        return str(self.value("--served-model-name") or self.model)

    @property
    def host(self) -> str:
        return str(self.value("--host") or "0.0.0.0")

    @property
    def port(self) -> int:
        return int(self.value("--port") or 8000)

    @property
    def tp(self) -> int:
        return int(self.value("--tensor-parallel-size") or 1)

    @property
    def max_num_seqs(self) -> int:
        return int(self.value("--max-num-seqs") or 256)

    def max_model_len(self, default: int) -> int:
        raw = self.value("--max-model-len")
        return parse_length(raw) if raw not in (None, True) else default

    @property
    def mm_all_zero(self) -> bool:
        limits = self.json_value("--limit-mm-per-prompt")
        return bool(limits) and all(v == 0 for v in limits.values())

    def non_default_args(self) -> dict[str, Any]:
        """What vLLM logs as `non-default args:` (the flags given, as Python values)."""
        args: dict[str, Any] = {"model_tag": self.model}
        for name in self.order:
            raw = self.flags[name]
            key = name[2:].replace("-", "_")
            if raw is True:
                args[key] = True
                continue
            text = str(raw)
            if text[:1] in "{[":
                try:
                    args[key] = json.loads(text)
                    continue
                except ValueError:
                    pass
            args[key] = int(text) if re.fullmatch(r"-?\d+", text) else text
        args["model"] = self.model
        return args


@dataclass
class Budget:
    """The scenario's KV cache: tokens and GiB at the recorded settings, vLLM's block size."""

    tokens: int
    gib: float
    block_size: int = 128

    def blocks_for(self, length: int) -> int:
        return math.ceil(length / self.block_size)

    def fits(self, length: int) -> bool:
        # vLLM's check: the KV cache of one max-length request must fit the available memory.
        return self.blocks_for(length) * self.block_size <= self.tokens

    def needed_gib(self, length: int) -> float:
        return self.blocks_for(length) * self.block_size * self.gib / self.tokens

    def estimate(self) -> int:
        # vLLM binary-searches the largest length whose KV cache fits: whole blocks of the budget.
        return (self.tokens // self.block_size) * self.block_size

    def concurrency(self, length: int) -> float:
        return (self.tokens // self.block_size) / self.blocks_for(length)


def _compare(actual: Any, spec: Mapping[str, Any]) -> bool:
    if "present" in spec:
        return (actual is not None) == bool(spec["present"])
    if actual is None:
        return False
    if "equals" in spec:
        return _loose_equal(actual, spec["equals"])
    if "in" in spec:
        return any(_loose_equal(actual, option) for option in spec["in"])
    try:
        number = float(actual)
    except (TypeError, ValueError):
        return False
    if "gt" in spec:
        return number > float(spec["gt"])
    if "lt" in spec:
        return number < float(spec["lt"])
    return False


def _loose_equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected or str(actual).lower() == str(expected).lower()
    if isinstance(expected, (int, float)):
        try:
            return float(actual) == float(expected)
        except (TypeError, ValueError):
            return False
    return str(actual) == str(expected)


def holds(condition: Mapping[str, Any] | None, inv: Invocation, budget_fits: bool) -> bool:
    """Evaluate a condition (None = always). `budget_fits`: --max-model-len fits the KV cache."""
    if not condition:
        return True
    for key, spec in condition.items():
        if key == "flag":
            ok = inv.has(spec)
        elif key == "flag_value":
            ok = _compare(inv.value(spec["flag"]), spec)
        elif key == "flag_json":
            ok = inv.has(spec["flag"]) and _compare(inv.json_value(spec["flag"]).get(spec["key"]), spec)
        elif key == "env":
            ok = all((name in inv.env) if value == "*" else inv.env.get(name) == str(value)
                     for name, value in spec.items())
        elif key == "env_unset":
            ok = spec not in inv.env
        elif key == "max_model_len_above_budget":
            ok = (not budget_fits) == bool(spec)
        elif key == "mm_all_zero":
            ok = inv.mm_all_zero == bool(spec)
        elif key == "any":
            ok = any(holds(item, inv, budget_fits) for item in spec)
        elif key == "all":
            ok = all(holds(item, inv, budget_fits) for item in spec)
        elif key == "not":
            ok = not holds(spec, inv, budget_fits)
        else:
            raise ScenarioError(f"unknown condition key {key!r}")
        if not ok:
            return False
    return True


def check_condition(condition: Any, where: str) -> None:
    """Reject unknown keys and malformed values at load time (a typo must not silently match)."""
    if condition is None:
        return
    if not isinstance(condition, dict) or not condition:
        raise ScenarioError(f"{where}: a condition is a non-empty mapping, got {condition!r}")
    for key, spec in condition.items():
        if key not in CONDITION_KEYS:
            raise ScenarioError(f"{where}: unknown condition key {key!r} (known: {', '.join(CONDITION_KEYS)})")
        if key in ("any", "all"):
            if not isinstance(spec, list) or not spec:
                raise ScenarioError(f"{where}: {key} takes a non-empty list of conditions")
            for item in spec:
                check_condition(item, where)
        elif key == "not":
            check_condition(spec, where)
        elif key in ("flag", "env_unset"):
            if not isinstance(spec, str):
                raise ScenarioError(f"{where}: {key} takes a name")
        elif key in ("flag_value", "flag_json"):
            needed = {"flag"} | ({"key"} if key == "flag_json" else set())
            if not isinstance(spec, dict) or not needed <= set(spec):
                raise ScenarioError(f"{where}: {key} needs {sorted(needed)}")
            extra = set(spec) - needed - set(COMPARATORS)
            if extra or not set(spec) & set(COMPARATORS):
                raise ScenarioError(f"{where}: {key} takes one of {COMPARATORS}, got {sorted(spec)}")
        elif key == "env":
            if not isinstance(spec, dict) or not spec:
                raise ScenarioError(f"{where}: env takes a mapping NAME: value")
        elif not isinstance(spec, bool):
            raise ScenarioError(f"{where}: {key} takes true or false")
