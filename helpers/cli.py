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


def _settings(**overrides: str | None):
    from helpers import settings

    return settings.load({k.upper(): v for k, v in overrides.items()})


@cli.command("stage")
@click.option("--stage", "stage", type=click.Choice(["a", "b"]), required=True,
              help="a: dummy weights (fast gate); b: real weights (mandatory gate)")
@click.option("--step", default=None, help="name of the step in evidence (default stage-a / stage-b)")
def stage_cmd(stage: str, step: str | None) -> None:
    """Serve MODEL, wait for readiness, send smoke requests, record evidence and a verdict."""
    from helpers.stage import StageRequest, StageRun

    settings = _settings()
    run = StageRun(settings, StageRequest(step=step or f"stage-{stage}", stage=stage))
    code = run.run()
    _write_junit(settings, [run.record])
    sys.exit(code)


@cli.command("capacity")
def capacity_cmd() -> None:
    """Sweep max-num-seqs at the tested max-model-len (SWEEP, MAX_MODEL_LEN, FORCE): one server
    start and one concurrent load per cell; capacity.json + capacity.md under RUNS_DIR/<model>/."""
    from helpers.capacity import CapacitySweep

    settings = _settings()
    sweep = CapacitySweep(settings)
    code = sweep.run()
    _write_junit(settings, [dict(c, step=f"capacity-{c['key']}") for c in sweep.cells
                            if c.get("verdict") != "NOT_RUN"])
    sys.exit(code)


def _write_junit(settings, records: list[dict]) -> None:
    if settings.junit:
        from helpers.junit import write_junit

        write_junit(settings.junit, "bringup", records)


@cli.command("stop")
@click.option("--token", default=None, help="only servers started by this invocation token")
@click.option("--port", type=int, default=None, help="only the server recorded for this port")
@click.option("--quiet", is_flag=True, help="print nothing when there is nothing to stop")
def stop_cmd(token: str | None, port: int | None, quiet: bool) -> None:
    """Stop servers this tool started, as recorded in its state files (never by name)."""
    from helpers.serve import stop_recorded

    settings = _settings()
    count = stop_recorded(settings.runs_dir, token=token, port=port)
    if count == 0 and not quiet:
        click.echo("no server of ours to stop")


@cli.command("hygiene")
def hygiene_cmd() -> None:
    """Stop our recorded servers, then check PORT is free (exit 3 if someone else holds it)."""
    from helpers.serve import describe_port_holders, port_is_free, stop_recorded
    from helpers.errors import EnvironmentProblem

    settings = _settings()
    stop_recorded(settings.runs_dir)
    if not port_is_free(settings.host, settings.port):
        raise EnvironmentProblem(
            f"port {settings.port} is in use by {describe_port_holders(settings.port)}; not ours, left untouched",
            "ask its owner or choose another PORT")
    click.echo(f"hygiene: no server of ours left; port {settings.port} on {settings.host} is free")


def main() -> None:
    try:
        cli.main(prog_name="helpers", standalone_mode=True)
    except BringupError as exc:  # raised outside a command (e.g. while parsing settings)
        click.echo(f"error: {exc.line()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
