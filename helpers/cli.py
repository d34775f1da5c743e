"""`python -m helpers <command>`: the one entry point the scripts call.

Every command turns a BringupError into one line on stderr and its exit code; no traceback
reaches the user for bad input or a missing environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from helpers.errors import EXIT_USAGE, BringupError, UsageError


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
@click.option("--kind", type=click.Choice(["dense", "moe", "vl"]), default="dense", show_default=True,
              help="vl: a Qwen2.5-VL shaped config, config and tokenizer only (use --weights dummy)")
@click.option("--weights", type=click.Choice(["real", "dummy"]), default="real", show_default=True,
              help="dummy: config and tokenizer only (for --load-format dummy)")
@click.option("--shards", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--head-dim", type=click.IntRange(8, 512), default=None,
              help="attention head size (hidden size = 4 x head dim); unusual sizes fail on CPU")
@click.option("--mtp-layers", type=click.IntRange(0, 8), default=0, show_default=True,
              help="declare MTP layers in config (and write them unless --no-mtp-weights)")
@click.option("--mtp-style", type=click.Choice(["layers", "prefix"]), default="layers", show_default=True,
              help="layers: DeepSeek-V3 (num_nextn_predict_layers); prefix: Qwen3.5 (mtp.*)")
@click.option("--mtp-weights/--no-mtp-weights", default=True, show_default=True)
@click.option("--fp8", is_flag=True, help="block-fp8 projections with weight_scale_inv (DeepSeek-V3 style)")
def tiny_model(out: Path, kind: str, weights: str, shards: int, head_dim: int | None, mtp_layers: int,
               mtp_style: str, mtp_weights: bool, fp8: bool) -> None:
    """Generate a tiny deterministic checkpoint with a local tokenizer (no downloads)."""
    from helpers import tinymodel

    if kind == "vl" and weights == "real":
        raise UsageError("--kind vl is config-only", "add --weights dummy (TINY_WEIGHTS=dummy)")
    spec = tinymodel.TinySpec(kind=kind, mtp_layers=mtp_layers, mtp_style=mtp_style, mtp_weights=mtp_weights,
                              fp8=fp8)
    if head_dim:
        spec.hidden_size = head_dim * spec.num_heads
    path = tinymodel.generate(out, weights=weights, spec=spec, shards=shards)
    click.echo(f"tiny model ({kind}, weights {weights}) written to {path}")


@cli.command("triage")
@click.option("--model", default=None, help="name under MODEL_ROOT or a checkpoint path (default: MODEL)")
@click.option("--backend", default=None, help="ascend | cuda | cpu (default: BACKEND, else detected)")
@click.option("--json", "as_json", is_flag=True, help="print the triage.json record instead of the table")
@click.option("--registry/--no-registry", default=True, show_default=True,
              help="ask the installed vLLM's model registry (a subprocess; importing vLLM takes seconds)")
@click.option("--registry-timeout", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="seconds the registry subprocess may take before it is reported as unknown")
def triage_command(model: str | None, backend: str | None, as_json: bool, registry: bool,
                   registry_timeout: float) -> None:
    """Triage a checkpoint: table on stdout, RUNS_DIR/<model>/triage.json for later steps."""
    import json

    from helpers import settings as settings_module
    from helpers import triage

    settings = settings_module.load({"MODEL": model, "BACKEND": backend})
    if sys.stderr.isatty():
        click.echo("triage: reading config and safetensors headers; asking vLLM's registry ...", err=True)
    record = triage.triage(settings, registry=registry, registry_timeout=registry_timeout)
    path = triage.triage_path(settings, record.model["name"])
    kept = triage.write_record(record, path)
    data = record.to_dict()
    click.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else triage.render_table(data))
    if not as_json:
        click.echo(f"triage.json: {path}" + (f" (previous kept as {kept.name})" if kept else ""))
    if record.errors:
        more = f"; {len(record.errors) - 1} more" if len(record.errors) > 1 else ""
        raise UsageError(f"{record.errors[0]}{more}", f"details in {path}")


def main() -> None:
    try:
        cli.main(prog_name="helpers", standalone_mode=True)
    except BringupError as exc:  # raised outside a command (e.g. while parsing settings)
        click.echo(f"error: {exc.line()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
