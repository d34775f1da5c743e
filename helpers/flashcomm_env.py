"""The flashcomm1 state a box's environment carries into a run.

An image or a shell that exports VLLM_ASCEND_ENABLE_FLASHCOMM1=1 (or the older
VLLM_ASCEND_ENABLE_FLASHCOMM) turns flashcomm1 on in every start that inherits it, Stage A/B
included, where the versions that read the variable honour it (facts flashcomm1-switch-env,
flashcomm1-switch-env-flashcomm, flashcomm1-env-fallback-notice). A baseline must not carry a
feature: its run unsets the variable and says so; every run records what the environment held.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from helpers import ascend_build, ascend_facts

# variable -> the facts under which vllm-ascend reads it (any one holding is enough)
HONOURED_BY = {
    "VLLM_ASCEND_ENABLE_FLASHCOMM1": ("flashcomm1-switch-env", "flashcomm1-env-fallback-notice"),
    "VLLM_ASCEND_ENABLE_FLASHCOMM": ("flashcomm1-switch-env-flashcomm", "flashcomm1-switch-env"),
}
TRUE = {"1", "true", "yes", "on"}


def state(env: Mapping[str, str], version: str | ascend_build.Build | None,
          source_contains: Callable[[str, str], bool | None] | None = None) -> dict[str, Any]:
    """{variables: {name: value}, honoured: {name: True/False/None}, on: [names that switch it on here]}"""
    found = {name: env[name] for name in HONOURED_BY if name in env}
    honoured: dict[str, bool | None] = {}
    for name in found:
        answers = [ascend_facts.get(fact).decide(version, source_contains)[0] for fact in HONOURED_BY[name]]
        honoured[name] = True if any(answers) else (None if None in answers else False)
    on = [name for name, value in found.items() if value.strip().lower() in TRUE and honoured[name] is not False]
    return {"variables": found, "honoured": honoured, "on": on}


def baseline_note(record: Mapping[str, Any]) -> str:
    """The line a base run prints when it unsets the variables (empty when there is nothing to unset)."""
    if not record["on"]:
        return ""
    shown = ", ".join(f"{name}={record['variables'][name]}" for name in record["on"])
    maybe = "" if all(record["honoured"][name] for name in record["on"]) else " (may be honoured: unknown build)"
    return f"flashcomm1: the environment exports {shown}{maybe}; unset for this baseline run (a feature is not a baseline)"
