"""The `next:` command of a failed run, so that following it moves forward and pastes as is.

- A rung's change the run already had (its env, its flags, its `already` markers) is not asked for
  again: the rung's `then:` remedy is taken instead (fewer captures, then eager, then a code fix).
- EXTRA_ARGS keep each flag once: the run's own flags merged with the rung's (a JSON option such as
  --compilation-config is merged key by key, the rung's keys win).
- An env assignment the run already had is dropped from the command.
- The variables the user gave on make's command line are carried (BACKEND, MODEL_ROOT, RUNS_DIR ...),
  and the stage is kept: a Stage A failure's next step stays on Stage A.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

# make variables that belong to one invocation, never carried into the next command
NOT_CARRIED = {"MODEL", "LOG", "JUNIT", "JSON", "TRIAGE_JSON", "FORCE", "SWEEP", "STAGE"}
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$", re.S)
STAGE_TARGETS = ("stage-a", "stage-b")
MAX_STEPS = 8


def split_words(text: str) -> list[str]:
    try:
        return shlex.split(text or "")
    except ValueError:
        return (text or "").split()


def _items(words: list[str]) -> list[tuple[str, str | None]]:
    """argv words as (flag, value) pairs; a value is the next word unless it is a flag itself."""
    items: list[tuple[str, str | None]] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word.startswith("--") and "=" in word:
            flag, value = word.split("=", 1)
            items.append((flag, value))
        elif word.startswith("-") and index + 1 < len(words) and not words[index + 1].startswith("--"):
            items.append((word, words[index + 1]))
            index += 1
        else:
            items.append((word, None))
        index += 1
    return items


def _json(value: str | None) -> dict[str, Any] | None:
    try:
        data = json.loads(value or "")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def merge_args(base: list[str], extra: list[str]) -> list[str]:
    """base then extra, each flag once: JSON objects merged key by key (extra wins), else extra's value."""
    merged: dict[str, str | None] = {}
    for flag, value in _items(base) + _items(extra):
        old = merged.get(flag)
        if flag in merged and _json(old) is not None and _json(value) is not None:
            value = json.dumps({**(_json(old) or {}), **(_json(value) or {})}, separators=(",", ":"))
        merged[flag] = value
    words: list[str] = []
    for flag, value in merged.items():
        words += [flag] if value is None else [flag, value]
    return words


def flags_in_effect(extra: list[str], argv: list[str]) -> bool:
    """Every flag of `extra` is already in argv with the same value (JSON: the same keys and values)."""
    have = dict(_items(argv))
    for flag, value in _items(extra):
        if flag not in have:
            return False
        if value is None:
            continue
        want, got = _json(value), _json(have[flag])
        if want is not None and got is not None:
            if any(got.get(key) != item for key, item in want.items()):
                return False
        elif have[flag] != value:
            return False
    return True


def env_changes(command: str) -> dict[str, str]:
    """The leading VAR=value words of a rung's make command that set the server's environment
    (not make's own EXTRA_ARGS / MAX_MODEL_LEN, not templates still to fill)."""
    found = {}
    for word in split_words(command.split("&&")[-1]):
        match = ASSIGNMENT.match(word)
        if not match:
            break
        if match.group(1) not in ("EXTRA_ARGS", "MAX_MODEL_LEN") and "{" not in match.group(2):
            found[match.group(1)] = match.group(2)
    return found


def in_effect(entry: dict[str, Any], argv: list[str], env: dict[str, str]) -> bool:
    """Whether the run already had this rung's change (so following it again cannot help)."""
    for marker in entry.get("already") or []:
        name, _, value = str(marker).partition("=")
        if (value and env.get(name) == value) or (not value and marker in argv):
            return True
    extra = split_words(str(entry.get("extra_args") or ""))
    changes = env_changes(str(entry.get("command") or ""))
    if not extra and not changes:
        return False
    return flags_in_effect(extra, argv) and all(env.get(k) == v for k, v in changes.items())


def advance(rungs: dict[str, dict[str, Any]], rung: str | None, argv: list[str], env: dict[str, str]) -> str | None:
    """The first remedy along `then:` whose change the run did not have yet."""
    seen = 0
    while rung and seen < MAX_STEPS and in_effect(rungs.get(rung) or {}, argv, env) and (rungs.get(rung) or {}).get("then"):
        rung = str(rungs[rung]["then"])
        seen += 1
    return rung


def double_quoted(text: str) -> str:
    """A shell double-quoted word (what a person types: EXTRA_ARGS="--flag '{...}'")."""
    return '"' + "".join("\\" + c if c in '"\\$`' else c for c in text) + '"'


def quote_word(word: str) -> str:
    """A word as a person types it: VAR="value with spaces", other words shell-quoted."""
    match = ASSIGNMENT.match(word)
    if match and shlex.quote(match.group(2)) != match.group(2):
        return f"{match.group(1)}={double_quoted(match.group(2))}"
    return shlex.quote(word)


def _segment(words: list[str], run_env: dict[str, str], carried: dict[str, str], stage: str) -> list[str]:
    """One `VAR=v make target ARGS` segment: drop what the run already had, keep the stage, carry the rest."""
    if "make" not in words:
        return words
    at = words.index("make")
    prefix = [w for w in words[:at] if not (ASSIGNMENT.match(w) and run_env.get(w.split("=", 1)[0]) == w.split("=", 1)[1])]
    target = words[at + 1] if at + 1 < len(words) else ""
    rest = words[at + 2:]
    if stage == "a" and target == "stage-b":
        target = "stage-a"  # a Stage A failure is fixed on Stage A first
    named = {w.split("=", 1)[0] for w in prefix + rest if ASSIGNMENT.match(w)}
    if target not in STAGE_TARGETS and target not in ("hygiene",) and stage == "a" and "STAGE" not in named:
        rest.append("STAGE=a")
    rest += [f"{name}={value}" for name, value in carried.items() if name not in named]
    return prefix + ["make", target] + rest


def finish(command: str, *, run_env: dict[str, str] | None = None, given: dict[str, str] | None = None,
           stage: str = "b") -> str:
    """The pasteable next command: no env the run already had, the stage kept, the user's variables carried."""
    if not command or "make" not in command:
        return command
    carried = {k: v for k, v in (given or {}).items() if k not in NOT_CARRIED}
    parts = []
    for segment in command.split(" && "):
        words = split_words(segment)
        parts.append(" ".join(quote_word(w) for w in _segment(words, run_env or {}, carried, stage)))
    return " && ".join(parts)
