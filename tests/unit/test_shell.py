"""The scripts are the runbook a person reads: strict mode everywhere and shellcheck-clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

SCRIPTS = sorted((REPO / "scripts").glob("*.sh")) + [REPO / ".ci" / "run"]
SHELLCHECK = Path(sys.executable).parent / "shellcheck"


def test_every_script_is_shellcheck_clean():
    result = subprocess.run([str(SHELLCHECK), *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_every_script_runs_in_strict_mode():
    for script in SCRIPTS:
        if script.name == "lib.sh":
            continue  # sourced by the others
        assert "set -euo pipefail" in script.read_text(), script.name
