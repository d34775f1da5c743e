"""The helper commands of this package (`python -m helpers all-features | serve`), added to the
CLI group by helpers/cli.py."""

from __future__ import annotations

import sys

import click

from helpers.errors import EXIT_INTERRUPTED


def _settings_and_model():
    from helpers import model, settings

    loaded = settings.load()
    return loaded, model.resolve(loaded)


@click.command("all-features")
def all_features_cmd() -> None:
    """Feature-first: Stage A, one Stage B with every applicable feature on (each decided from its
    own evidence line), flashcomm1 beside it; isolation (bisection) only on failure or missing
    evidence; a fresh identical PASS is reused (FORCE=1 reruns); then the matrix. Exit 1 when
    Stage B or an applicable feature failed, 130 when interrupted."""
    from helpers.starts.featurefirst import AllFeatures

    settings, model = _settings_and_model()
    try:
        code = AllFeatures(settings, model).run()
    except KeyboardInterrupt:  # Ctrl-C between two runs: each run already stopped its own server
        code = EXIT_INTERRUPTED
    sys.exit(code)


@click.command("serve")
def serve_cmd() -> None:
    """Start the documented command (Stage B, like the documented run) and leave it running for the
    steps that can share it (capacity's baseline cell, accuracy) and for a person's own curl;
    `make hygiene` stops it. Exit 0 once it answers, 1 when it does not come up."""
    from helpers.starts.live import serve_documented

    settings, model = _settings_and_model()
    sys.exit(serve_documented(settings, model))


COMMANDS = [all_features_cmd, serve_cmd]
