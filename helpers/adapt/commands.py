"""`python -m helpers scaffold` and `python -m helpers keymap` (added to the main CLI)."""

from __future__ import annotations

import shlex
import sys

import click

from helpers import model as model_module
from helpers import settings as settings_module
from helpers.errors import UsageError

ROOTS = {"vllm-ascend": "VLLM_ASCEND_SRC", "vllm": "VLLM_SRC"}


def _variable(name: str) -> str:
    return settings_module.raw_values().get(name, "").strip()


@click.command("scaffold")
def scaffold_cmd() -> None:
    """Write the minimal adapter of MODEL's architecture (FROM, ADAPTER_ROOT) into an implementation root."""
    from helpers import checkpoint as ckpt
    from helpers.adapt import scaffold

    settings = settings_module.load()
    resolved = model_module.resolve(settings)
    root_name = _variable("ADAPTER_ROOT") or "vllm-ascend"
    if root_name not in ROOTS:
        raise UsageError(f"ADAPTER_ROOT={root_name!r} is unknown", "use ADAPTER_ROOT=vllm-ascend (default) or vllm")
    root = settings.vllm_ascend_src if root_name == "vllm-ascend" else settings.vllm_src
    config, facts = resolved.config, resolved.facts
    arch = (facts.architectures or [""])[0]
    if not arch:
        raise UsageError("config.json names no architectures", "add `architectures` to config.json")
    try:
        inventory, index = ckpt.take_inventory(resolved.checkpoint, config)
    except ckpt.CheckpointError as exc:
        raise UsageError(str(exc), "fix the checkpoint") from None
    tensors = ckpt.scan_headers(resolved.checkpoint, inventory.weight_files, index).tensors
    base, renames, sources = scaffold.choose_base(_variable("FROM"), config, facts, tensors)
    plan = scaffold.plan(root, root_name, arch, facts.model_type, base, renames, sources)
    written = scaffold.write(plan)
    model_arg = shlex.quote(resolved.requested or resolved.checkpoint.name)
    click.echo(f"scaffold: {arch} reuses vLLM's {base}"
               + (" with the rename " + ", ".join(f"{a} -> {b}" for a, b in renames) if renames else ""))
    for path in written:
        click.echo(f"  {'created' if path in plan.created else 'changed'} {plan.root / path}")
    if facts.multimodal["is_multimodal"]:
        click.echo("  multimodal checkpoint: the processor is not scaffolded; reuse the base class's processor "
                   "or add one by hand")
    click.echo(f"next: make keymap MODEL={model_arg}   (then: make changes MODEL={model_arg})")


@click.command("keymap")
@click.option("--timeout", type=click.FloatRange(10, 7200), default=600.0, show_default=True,
              help="seconds the probe process may take")
def keymap_cmd(timeout: float) -> None:
    """Run the adapter's own load_weights over header-only tensors: unmapped keys without a server."""
    from helpers import profiles, status
    from helpers.adapt import keymap

    settings = settings_module.load()
    resolved = model_module.resolve(settings)
    tp = settings.tp or _planned_tp(resolved)
    now = status.observe(settings, resolved, settings.backend or profiles.detect_backend())
    result = keymap.check(resolved.checkpoint, resolved.config, tp=tp, timeout=timeout)
    path = keymap.write(result, settings.runs_dir, resolved.name, keymap.made_on(now, tp))
    for line in keymap.summary(result):
        click.echo(line)
    click.echo(f"keymap.json: {path}")
    sys.exit(1 if result.failing else 0)


def _planned_tp(resolved: model_module.Model) -> int:
    """TP unset: the plan triage made for this box (triage.json), else 1."""
    from helpers import evidence as ev

    try:
        return int((ev.read_json(resolved.runs_dir / "triage.json").get("parallel") or {}).get("tp") or 1)
    except (OSError, ValueError, AttributeError):
        return 1


COMMANDS = (scaffold_cmd, keymap_cmd)
