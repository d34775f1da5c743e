"""The "where am I" commands (`python -m helpers context | changes | status | reset-roots`): they
read and record the state of the box, the roots and the evidence, and start no server. Added to
the CLI group by helpers/cli.py."""

from __future__ import annotations

import os
import sys

import click

from helpers import model as model_module
from helpers import settings as settings_module


def _show(settings, as_json: bool, record: dict, table: str) -> None:
    """The record as JSON (--json or JSON=1), else the table a person reads."""
    import json

    click.echo(json.dumps(record, indent=2, ensure_ascii=False) if as_json or settings.json_output else table)


@click.command("reset-roots")
def reset_roots_cmd() -> None:
    """Reset VLLM_SRC and VLLM_ASCEND_SRC to HEAD, only with CONFIRM=yes, after saving each root's
    diff and untracked files under RUNS_DIR/implementation-roots/<stamp>-reset-roots/."""
    from helpers import reset_roots

    reset_roots.reset_roots(settings_module.load(), os.environ.get("CONFIRM", ""), click.echo)


@click.command("context")
@click.option("--json", "as_json", is_flag=True, help="print context.json instead of the table (also JSON=1)")
def context_cmd(as_json: bool) -> None:
    """Collect the context: checkpoint, implementation roots (HEAD, branch, dirty), delivery repo,
    versions and where each is imported from, NPU processes (ours or not), the port. Writes
    RUNS_DIR/<model>/context.json (MODEL may be unset); exit 3 when a needed NPU or the port is taken."""
    from helpers import context, defaults, profiles
    from helpers.errors import EnvironmentProblem
    from helpers.plan import plan_for

    settings = settings_module.load()
    model = model_module.resolve(settings) if settings.model.strip() else None
    profile = profiles.load(settings.backend)
    # the length a stage would serve at (defaults.py), not a profile constant
    plan = plan_for(profile, settings, model, settings.stage,
                    max_model_len=defaults.choose_max_model_len(settings, model, profile).value) \
        if model is not None else None
    record = context.collect(settings, model=model, profile=profile, plan=plan)
    path = context.context_path(settings, model)
    context.write(record, path)
    _show(settings, as_json, record, context.render_table(record) + f"\ncontext.json: {path}")
    if record["problems"]:
        raise EnvironmentProblem(record["problems"][0], context.hint_for(record))


@click.command("changes")
@click.option("--json", "as_json", is_flag=True, help="print changes.json instead of the table (also JSON=1)")
def changes_cmd(as_json: bool) -> None:
    """The model's code changes in VLLM_SRC and VLLM_ASCEND_SRC since the base a run first saw:
    each file classified (helpers/changes.yaml), compiled, the architecture's registration read
    from the roots' source. Writes RUNS_DIR/<model>/changes.json; exit 1 when a check fails."""
    from helpers import changes

    settings = settings_module.load()
    model = model_module.resolve(settings, evidence_only=True)
    record = changes.check(settings, model)
    path = changes.write(record, model)
    _show(settings, as_json, record, changes.render_table(record) + f"\nchanges.json: {path}")
    sys.exit(changes.exit_code(record))


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="print the status record instead of the table (also JSON=1)")
def status_cmd(as_json: bool) -> None:
    """Where am I: the checklist of MODEL from its recorded evidence (verdict, age, run
    directory, what is stale since), whether sign-off is possible, the next command. Starts nothing."""
    from helpers import status

    settings = settings_module.load()
    from helpers.timeline.starts import render_text, starts_of

    model = model_module.resolve(settings, evidence_only=True)
    record = status.collect(settings, model)
    starts = starts_of(model.runs_dir, last=5)
    record["starts"] = [{"run_dir": str(s.run_dir), "step": s.step, "verdict": s.verdict, "timeline": s.timeline}
                        for s in starts]
    _show(settings, as_json, record, status.render_table(record) + "\n" + render_text(starts))


COMMANDS = (reset_roots_cmd, context_cmd, changes_cmd, status_cmd)
