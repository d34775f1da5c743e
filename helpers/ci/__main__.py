"""`python -m helpers.ci matrix|image|remember|summary`: the steps of ci/ascend/bringup.yml that are
not make targets. Bad input: one line, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from helpers.ci import pipeline
from helpers.errors import EXIT_USAGE, BringupError


@click.group()
def ci() -> None:
    """Glue of the CI pipeline in ci/ascend/."""


@ci.command("matrix")
@click.argument("models_yaml", type=click.Path(path_type=Path))
def matrix_cmd(models_yaml: Path) -> None:
    """Print `matrix=<json>` (one job per model of the list) for $GITHUB_OUTPUT."""
    click.echo(pipeline.matrix_output(pipeline.load_models(models_yaml)))


@ci.command("image")
@click.option("--state", type=click.Path(path_type=Path), required=True, help="the last validated image's versions")
@click.option("--record", is_flag=True, help="record this image as validated")
def image_cmd(state: Path, record: bool) -> None:
    """Print `changed=true|false` (versions of vLLM, vllm-ascend, torch, torch-npu, transformers, CANN)."""
    changed, line = pipeline.image_changed(state, record=record)
    click.echo(line, err=True)
    click.echo(f"changed={'true' if changed else 'false'}")


@ci.command("remember")
@click.option("--model-dir", type=click.Path(path_type=Path), required=True)
def remember_cmd(model_dir: Path) -> None:
    """Keep the model's matrix.json as the "before" of this run."""
    click.echo(pipeline.remember(model_dir))


@ci.command("summary")
@click.option("--model-dir", type=click.Path(path_type=Path), required=True)
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="also every matrix cell as JUnit XML")
def summary_cmd(model_dir: Path, junit: Path | None) -> None:
    """Markdown for $GITHUB_STEP_SUMMARY: the feature matrix and the cells changed since the last run."""
    click.echo(pipeline.summary(model_dir))
    if junit is not None:
        pipeline.matrix_junit(model_dir, junit)


def main() -> None:
    try:
        ci.main(prog_name="helpers.ci", standalone_mode=True)
    except BringupError as exc:
        click.echo(f"error: {exc.line()}", err=True)
        sys.exit(exc.exit_code or EXIT_USAGE)


if __name__ == "__main__":
    main()
