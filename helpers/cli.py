"""`python -m helpers <command>`: the one entry point the scripts call.

Every command turns a BringupError into one line on stderr and its exit code; no traceback
reaches the user for bad input or a missing environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from helpers.errors import EXIT_USAGE, BringupError, UsageError
from helpers.settings import REPO_ROOT


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
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="checkpoint directory (default: TINY_DIR)")
@click.option("--kind", type=click.Choice(["dense", "moe", "vl"]), default=None,
              help="vl: a Qwen2.5-VL shaped config, config and tokenizer only (default: TINY_KIND)")
@click.option("--weights", type=click.Choice(["real", "dummy"]), default=None,
              help="dummy: config and tokenizer only, for --load-format dummy (default: TINY_WEIGHTS)")
@click.option("--shards", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--head-dim", type=click.IntRange(8, 512), default=None,
              help="attention head size (hidden size = 4 x head dim); unusual sizes fail on CPU")
@click.option("--mtp-layers", type=click.IntRange(0, 8), default=0, show_default=True,
              help="declare MTP layers in config (and write them unless --no-mtp-weights)")
@click.option("--mtp-style", type=click.Choice(["layers", "prefix"]), default="layers", show_default=True,
              help="layers: DeepSeek-V3 (num_nextn_predict_layers); prefix: Qwen3.5 (mtp.*)")
@click.option("--mtp-weights/--no-mtp-weights", default=True, show_default=True)
@click.option("--fp8", is_flag=True, help="block-fp8 projections with weight_scale_inv (DeepSeek-V3 style)")
def tiny_model(out: Path | None, kind: str | None, weights: str | None, shards: int, head_dim: int | None,
               mtp_layers: int, mtp_style: str, mtp_weights: bool, fp8: bool) -> None:
    """Generate a tiny deterministic checkpoint with a local tokenizer (no downloads)."""
    from helpers import tinymodel

    documented = _settings()
    out = out or documented.tiny_dir or Path("work/models/tiny-qwen2")
    kind = kind or documented.tiny_kind
    weights = weights or documented.tiny_weights
    if kind not in ("dense", "moe", "vl") or weights not in ("real", "dummy"):
        raise UsageError(f"TINY_KIND={kind!r} / TINY_WEIGHTS={weights!r} is unknown",
                         "use TINY_KIND=dense|moe|vl and TINY_WEIGHTS=real|dummy")
    if kind == "vl" and weights == "real":
        raise UsageError("--kind vl is config-only", "add --weights dummy (TINY_WEIGHTS=dummy)")
    spec = tinymodel.TinySpec(kind=kind, mtp_layers=mtp_layers, mtp_style=mtp_style, mtp_weights=mtp_weights,
                              fp8=fp8)
    if head_dim:
        spec.hidden_size = head_dim * spec.num_heads
    path = tinymodel.generate(out, weights=weights, spec=spec, shards=shards)
    click.echo(f"tiny model ({kind}, weights {weights}) written to {path}")


def _settings(**overrides: str | None):
    from helpers import settings

    return settings.load({k.upper(): v for k, v in overrides.items()})


def _model(settings, *, evidence_only: bool = False):
    """MODEL, resolved once for the whole command."""
    from helpers import model

    return model.resolve(settings, evidence_only=evidence_only)


# a child of a parallel set (helpers/starts/runset.py) reports its verdict and run directory here
RESULT = click.option("--result", type=click.Path(path_type=Path), default=None, hidden=True)


@cli.command("stage")
@click.option("--stage", "stage", type=click.Choice(["a", "b"]), required=True,
              help="a: dummy weights (fast gate); b: real weights (mandatory gate)")
@click.option("--step", default=None, help="name of the step in evidence (default stage-a / stage-b)")
@click.option("--features", default=None,
              help="comma-separated gates switched on together (feature-first Stage B; each decided from its line)")
@RESULT
def stage_cmd(stage: str, step: str | None, features: str | None, result: Path | None) -> None:
    """Serve MODEL, wait for readiness, send smoke requests, record evidence and a verdict."""
    from helpers.stage import StageRequest, StageRun
    from helpers.starts import featurefirst
    from helpers.starts.runset import write_result

    settings = _settings()
    model = _model(settings)
    if features is not None:
        run = featurefirst.feature_run(settings, model, [f for f in features.split(",") if f], step or "stage-b")
    else:
        run = StageRun(settings, model, StageRequest(step=step or f"stage-{stage}", stage=stage))
    code = run.run()
    write_result(result, run.record)
    _write_junit(settings, [run.record])
    _say_sign_off(settings, model, stage)
    sys.exit(code)


def _say_sign_off(settings, model, stage: str) -> None:
    """After a real-weight run, the console says what status, matrix and report say (one rule)."""
    if stage != "b":
        return
    from helpers.runs import read_runs
    from helpers.verdict import signoff

    decision = signoff.decide(read_runs(model.runs_dir), model.name, settings.accept_fallback, model.runs_dir)
    click.echo(f"sign-off: {decision.headline}")


@cli.command("capacity")
@click.option("--cells-only", is_flag=True, hidden=True, help="a run of a parallel set: cell.json only")
@RESULT
def capacity_cmd(cells_only: bool, result: Path | None) -> None:
    """Sweep max-num-seqs at the tested max-model-len (SWEEP, MAX_MODEL_LEN, FORCE): one server
    start and one concurrent load per cell (at once on disjoint NPU groups: PARALLEL);
    capacity.json + capacity.md under RUNS_DIR/<model>/.
    With CAPACITY_NOT_FEASIBLE: record that reason instead (sign-off needs a result or a reason)."""
    from helpers.capacity import CapacitySweep
    from helpers.starts.runset import write_result
    from helpers.verdict import signoff

    settings = _settings()
    if settings.capacity_not_feasible:  # the engineer's recorded reason, instead of a sweep
        model = _model(settings, evidence_only=True)
        path = signoff.record_not_feasible(model.runs_dir, model.name, settings.capacity_not_feasible)
        click.echo(f"capacity {model.name}: not run; reason recorded for sign-off: "
                   f"{settings.capacity_not_feasible}\n  evidence: {path}")
        sys.exit(0)
    sweep = CapacitySweep(settings, _model(settings))
    sweep.cells_only = cells_only
    code = sweep.run()
    write_result(result, sweep.cells[-1] if sweep.cells else {})
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
    from helpers.serve import describe_port_holders, stop_recorded, wait_port_free
    from helpers.errors import EnvironmentProblem

    settings = _settings()
    stopped = stop_recorded(settings.runs_dir)
    if not wait_port_free(settings.host, settings.port, 5.0 if stopped else 0.0):
        raise EnvironmentProblem(
            f"port {settings.port} is in use by {describe_port_holders(settings.port)}; not ours, left untouched",
            "ask its owner or choose another PORT")
    click.echo(f"hygiene: no server of ours left; port {settings.port} on {settings.host} is free")


@cli.command("diagnose")
@click.option("--log", "log", default=None, help="server log to read (default: LOG from the environment / .env)")
@click.option("--json", "as_json", is_flag=True, help="print the diagnosis as JSON")
@click.option("--model", default=None, help="model for the suggested next command (default: MODEL, else the log's)")
def diagnose_cmd(log: str | None, as_json: bool, model: str | None) -> None:
    """Read a vLLM server log: verdict, root-cause line, category, hint, next ladder step.

    Exit 0 when no failure is found, 1 when a failure is diagnosed, 2 for a bad LOG.
    """
    import json

    from helpers import diagnosis
    from helpers.errors import UsageError

    loaded = _settings()
    path = log if log else str(loaded.log or "")
    if not path:
        raise UsageError("no log given", "run make diagnose LOG=path/to/server.log")
    diag = diagnosis.diagnose(path, model=model if model is not None else loaded.model)
    if as_json:
        click.echo(json.dumps(diag.to_dict(), ensure_ascii=False, indent=2, default=str))
    else:
        click.echo(diagnosis.render_diagnosis(diag))
    sys.exit(diag.exit_code)


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

    from helpers import context
    from helpers import settings as settings_module
    from helpers import triage
    from helpers.triage_view import render_table

    settings = settings_module.load({"MODEL": model, "BACKEND": backend})
    resolved = _model(settings)
    # the context this triage starts from (no NPU or port check: triage starts no server)
    context_record = context.collect(settings, model=resolved, npus=False, port=False)
    context.write(context_record, context.context_path(settings, resolved))
    if sys.stderr.isatty():
        click.echo("triage: reading config and safetensors headers; asking vLLM's registry ...", err=True)
    record = triage.triage(settings, resolved, registry=registry, registry_timeout=registry_timeout)
    record.context = context_record
    path = triage.triage_path(resolved)
    kept = triage.write_record(record, path)
    data = record.to_dict()
    as_json = as_json or settings.triage_json
    click.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else render_table(data))
    if not as_json:
        click.echo(f"triage.json: {path}" + (f" (previous kept as {kept.name})" if kept else ""))
        click.echo(context.summary_line(context_record))
    if record.errors:
        more = f"; {len(record.errors) - 1} more" if len(record.errors) > 1 else ""
        raise UsageError(f"{record.errors[0]}{more}", f"details in {path}")


@cli.command("signatures-doc")
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="file to write (default: runbooks/signatures.zh.md)")
@click.option("--check", is_flag=True, help="write nothing; exit 1 when the file differs from a fresh render")
def signatures_doc_cmd(out: Path | None, check: bool) -> None:
    """Render the Chinese failure-signature quick reference from helpers/signatures.yaml."""
    from helpers import render_signatures
    from helpers.evidence import atomic_write_text

    target = out or render_signatures.DEFAULT_OUT
    text = render_signatures.render()
    current = target.read_text(encoding="utf-8") if target.is_file() else None
    if check:
        if current != text:
            state = "missing" if current is None else "out of date with helpers/signatures.yaml"
            click.echo(f"{target} is {state}; run `make runbooks` and commit the result", err=True)
            sys.exit(1)
        click.echo(f"{target} matches the signature catalog")
        return
    if current == text:
        click.echo(f"{target} already up to date")
        return
    atomic_write_text(target, text)
    click.echo(f"wrote {target}")


@cli.command("accuracy")
def accuracy_cmd() -> None:
    """lm-eval (TASKS, NUM_FEWSHOT, LIMIT, DATASET_DIR) against our server for MODEL on PORT, or a
    Stage B server started for it; writes accuracy.json with lm-eval's metric names."""
    from helpers.accuracy import AccuracyRun

    settings = _settings()
    sys.exit(AccuracyRun(settings, _model(settings)).run())


@cli.command("report")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="directory for the rendered files (default RUNS_DIR/<model>/deliverables)")
def report_cmd(out: Path | None) -> None:
    """Render the Chinese report and runbook, the e2e YAML, the tutorial (when DELIVERY_REPO is
    set: its docs system decides the syntax) and the issue comment, from recorded evidence (the
    matrix is rebuilt from it first). Exit 1 when the evidence does not sign off (no full-layer
    Stage B PASS): the files are written and say so first."""
    from helpers import matrix
    from helpers.deliver.docs import detect_docs_system
    from helpers.errors import SignOffRefused
    from helpers.render import render_all

    settings = _settings()
    model = _model(settings, evidence_only=True)
    docs = None
    if settings.delivery_repo is not None:
        if not settings.delivery_repo.is_dir():
            raise UsageError(f"DELIVERY_REPO={str(settings.delivery_repo)!r} is not a directory",
                             "point it at a vllm-ascend checkout")
        docs = detect_docs_system(settings.delivery_repo)
    matrix.write_matrix(model, settings.backend, settings.accept_fallback)
    result = render_all(settings, model, out_dir=out, docs_kind=docs.kind if docs else None)
    for line in result.summary_lines():
        click.echo(line)
    if not result.signed_off:
        raise SignOffRefused(result.missing)


@cli.command("deliver")
def deliver_cmd() -> None:
    """Make exactly one signed commit in DELIVERY_REPO with the model's vllm-ascend code (from
    changes.json), the e2e YAML, the tutorial and its nav/toctree entry; export the vLLM root's
    changes as a patch; then render the report and issue comment again with the commit hash."""
    from helpers import deliver, matrix
    from helpers.render import render_all

    settings = _settings()
    model = _model(settings, evidence_only=True)
    delivery = deliver.prepare(settings, model)
    matrix.write_matrix(model, settings.backend, settings.accept_fallback)
    rendered = render_all(settings, model, docs_kind=delivery.docs.kind)
    lines = deliver.commit(delivery, rendered.files, rendered.signed_off, rendered.missing, rendered.evidence)
    again = render_all(settings, model, docs_kind=delivery.docs.kind)  # now with the commit hash
    lines.append(f"  report: {again.files['report']} (with the commit hash)")
    lines += deliver.post_issue_comment(model, settings.issue_url, again.files["issue comment"])
    for line in lines:
        click.echo(line)


@cli.command("gate")
@click.argument("name")
@RESULT
def gate_cmd(name: str, result: Path | None) -> None:
    """Feature gate NAME (ep, flashcomm1, mtp, xlite, eager, dynamo-fallback, text-only) on MODEL.

    Exit 0 for PASS and for a no-run verdict (NOT_APPLICABLE, CHECKPOINT_MISSING,
    FRAMEWORK_UNSUPPORTED), 1 for FAIL, 130 when interrupted.
    """
    from helpers import gates

    settings = _settings()
    from helpers.starts.runset import write_result

    model = _model(settings)
    code, record = gates.run_gate(settings, model, name)
    write_result(result, record)
    _write_junit(settings, [record])
    if record.get("server_started") is not False:
        _say_sign_off(settings, model, settings.stage)
    sys.exit(code)


@cli.command("ladder")
def ladder_cmd() -> None:
    """The fallback ladder on MODEL: reproduce, xlite, eager, dynamo-disable, text-only; stop at the first PASS."""
    from helpers import ladder

    settings = _settings()
    model = _model(settings)
    code, summary = ladder.run_ladder(settings, model)
    _write_junit(settings, summary.get("records", []))
    _say_sign_off(settings, model, settings.stage)
    sys.exit(code)


@cli.command("matrix")
@click.option("--exit-code", "exit_code", is_flag=True,
              help="exit 1 when Stage B or an applicable feature failed (for make all-features)")
def matrix_cmd(exit_code: bool) -> None:
    """Aggregate the latest recorded evidence of MODEL into matrix.json and matrix.md."""
    from helpers import matrix

    settings = _settings()
    data, json_path, md_path = matrix.write_matrix(_model(settings, evidence_only=True), settings.backend,
                                                     settings.accept_fallback)
    click.echo(matrix.render_terminal(data))
    click.echo(f"matrix: {json_path}\n        {md_path}")
    if exit_code:
        sys.exit(matrix.exit_code(data))


# --- context, changes, status: the engineer's side of bring-up ---------------------------------------

def restore_box_pythonpath() -> None:
    """scripts/lib.sh puts this repo first on PYTHONPATH so `python -m helpers` imports; every
    process we start (servers, lm-eval, probes) gets the box's own PYTHONPATH back, unchanged."""
    parts = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if parts and parts[0] and Path(parts[0]).resolve() == REPO_ROOT:
        rest = parts[1:]
        if rest:
            os.environ["PYTHONPATH"] = os.pathsep.join(rest)
        else:
            del os.environ["PYTHONPATH"]


def main() -> None:
    restore_box_pythonpath()
    try:
        cli.main(prog_name="helpers", standalone_mode=True)
    except BringupError as exc:  # raised outside a command (e.g. while parsing settings)
        click.echo(f"error: {exc.line()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)


def _add_commands() -> None:
    """Commands kept beside their capability: where am I (context, changes, status, reset-roots),
    a new architecture (scaffold, keymap: helpers/adapt), fewer starts (all-features, serve:
    helpers/starts)."""
    from helpers import cli_where
    from helpers.adapt import commands as adapt_commands
    from helpers.starts import commands as start_commands

    for command in (*cli_where.COMMANDS, *adapt_commands.COMMANDS, *start_commands.COMMANDS):
        cli.add_command(command)


_add_commands()
