"""`python -m helpers <command>`: the one entry point the scripts call.

Every command turns a BringupError into one line on stderr and its exit code; no traceback
reaches the user for bad input or a missing environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from helpers.errors import EXIT_USAGE, BringupError


class Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BringupError as exc:
            click.echo(f"error: {exc.line()}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Bring a model up on vLLM / vllm-ascend and prove it works."""


@cli.command("tiny-model")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="checkpoint directory")
@click.option("--kind", type=click.Choice(["dense", "moe"]), default="dense", show_default=True)
@click.option("--weights", type=click.Choice(["real", "dummy"]), default="real", show_default=True,
              help="dummy: config and tokenizer only (for --load-format dummy)")
@click.option("--shards", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--head-dim", type=click.IntRange(8, 512), default=None,
              help="attention head size (hidden size = 4 x head dim); unusual sizes fail on CPU")
def tiny_model(out: Path, kind: str, weights: str, shards: int, head_dim: int | None) -> None:
    """Generate a tiny deterministic checkpoint with a local tokenizer (no downloads)."""
    from helpers import tinymodel

    spec = tinymodel.TinySpec(kind=kind)
    if head_dim:
        spec.hidden_size = head_dim * spec.num_heads
    path = tinymodel.generate(out, weights=weights, spec=spec, shards=shards)
    click.echo(f"tiny model ({kind}, weights {weights}) written to {path}")


@cli.command("diagnose")
@click.option("--log", "log", default=None, help="server log to read (default: LOG from the environment / .env)")
@click.option("--json", "as_json", is_flag=True, help="print the diagnosis as JSON")
@click.option("--model", default=None, help="model for the suggested next command (default: MODEL, else the log's)")
def diagnose_cmd(log: str | None, as_json: bool, model: str | None) -> None:
    """Read a vLLM server log: verdict, root-cause line, category, hint, next ladder step.

    Exit 0 when no failure is found, 1 when a failure is diagnosed, 2 for a bad LOG.
    """
    import json

    from helpers import logscan, settings
    from helpers.errors import UsageError

    loaded = settings.load()
    path = log if log is not None else loaded.get("LOG", "").strip()
    if not path:
        raise UsageError("no log given", "run make diagnose LOG=path/to/server.log")
    diag = logscan.diagnose(path, model=model if model is not None else loaded.model)
    if as_json:
        click.echo(json.dumps(diag.to_dict(), ensure_ascii=False, indent=2, default=str))
    else:
        click.echo(logscan.render_diagnosis(diag))
    sys.exit(diag.exit_code)


def main() -> None:
    try:
        cli.main(prog_name="helpers", standalone_mode=True)
    except BringupError as exc:  # raised outside a command (e.g. while parsing settings)
        click.echo(f"error: {exc.line()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
