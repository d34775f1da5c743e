"""Triage's adaptation block: what an architecture vLLM does not know needs before any start.

Recorded in triage.json as `adaptation` and shown in the triage table; its commands come first
in `next_commands` (make scaffold, make keymap), because a Stage A of an unregistered
architecture cannot pass.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from helpers.adapt import nearest, remote_code
from helpers.checkpoint import ConfigFacts, TensorInfo

ASCEND_MODELS_DIR = "vllm_ascend/models"


def module_name(model_type: str | None, arch: str) -> str:
    """The adapter's module name: the model_type in snake case (the architecture's otherwise)."""
    base = model_type or re.sub(r"(?<!^)(?=[A-Z])", "_", arch.removesuffix("ForCausalLM")).lower()
    return re.sub(r"\W+", "_", base.lower()).strip("_") or "new_model"


def assess(directory: Path, config: dict[str, Any], facts: ConfigFacts, tensors: dict[str, TensorInfo],
           code_files: list[str], registered: bool | None) -> dict[str, Any]:
    needed = registered is False
    arch = (facts.architectures or ["?"])[0]
    block: dict[str, Any] = {"needed": needed, "architecture": arch, "nearest": [], "rename": [],
                             "advice": []}
    if code_files or config.get("auto_map"):
        block["transformers"] = remote_code.check(directory, config, code_files)
    if needed:
        ranked = nearest.rank(config, facts, tensors)
        block["nearest"] = ranked["nearest"]
        block["facts"] = ranked["facts"]
        block["evidence"] = ranked["evidence"]
        first = ranked["nearest"][0] if ranked["nearest"] else None
        if first:
            block["rename"] = first["rename"]
            block["module"] = f"{ASCEND_MODELS_DIR}/{module_name(facts.model_type, arch)}.py"
            where = f"{first['vllm_file']}:{first['vllm_class']}" if first["vllm_file"] else first["arch"]
            block["advice"].append(f"reuse vLLM's {first['arch']} ({where}): make scaffold writes {block['module']} "
                                   f"and its register_model() entry")
    missing = (block.get("transformers") or {}).get("missing_text") or []
    if missing:
        target = block.get("module") or ASCEND_MODELS_DIR
        installed = block["transformers"]["installed_version"]
        block["advice"].append(f"transformers {installed} lacks {len(missing)} symbol(s) the checkpoint's code "
                               f"imports ({missing[0]}): never upgrade transformers; copy the needed code into "
                               f"the implementation root next to {target}")
    return block


def commands(model_arg: str, block: dict[str, Any]) -> list[dict[str, str]]:
    """The adaptation steps, first in triage's next commands."""
    if not block.get("needed"):
        return []
    model = shlex.quote(model_arg)
    first = (block.get("nearest") or [{}])[0].get("arch")
    source = f" FROM={first}" if first else ""
    return [{"command": f"make scaffold MODEL={model}{source}",
             "why": f"{block['architecture']} is not registered: write the adapter reusing {first or 'a vLLM class'}"},
            {"command": f"make keymap MODEL={model}",
             "why": "prove the adapter's weight mapping on the safetensors headers, before any server"}]


def view_lines(block: dict[str, Any] | None) -> list[str]:
    """Lines for the triage table."""
    if not block:
        return []
    lines = []
    for rank_, entry in enumerate(block.get("nearest") or [], 1):
        where = f" ({entry['vllm_file']}: class {entry['vllm_class']})" if entry["vllm_file"] else ""
        lines.append(f"最近架构 nearest #{rank_}: {entry['arch']} score {entry['score']}{where}")
        lines += [f"    {reason}" for reason in entry["reasons"]]
    if block.get("rename"):
        lines.append("权重改名 rename: " + ", ".join(f"{a} -> {b}" for a, b in block["rename"]))
    check = block.get("transformers")
    if check:
        lines.append(f"transformers: checkpoint {check['checkpoint_version'] or '?'}, installed "
                     f"{check['installed_version'] or 'none'}; missing symbols: "
                     + ("; ".join(check["missing_text"]) or "none"))
    lines += [f"适配 adaptation: {advice}" for advice in block.get("advice") or []]
    return lines
