"""Accuracy end to end on the real vLLM CPU server: `make accuracy` installs lm-eval if missing
(scripts/lib.sh ensure_lm_eval, the same path a fresh machine takes; `make test` runs it once
before its two pytest sessions, so no install changes the venv under running tests), starts a Stage B server of its own,
runs lm-eval offline on the tiny local gsm8k-shaped task, stops the server, and `make report`
turns the result into a valid e2e YAML. The score of a random tiny model means nothing: the test
asserts the pipeline and lm-eval's metric names, not the value. One server for the whole module."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO, base_env, run_make
from helpers import e2e
from helpers.serve import port_is_free, recorded_servers

TINY_TASK = REPO / "tests/fixtures/lm_eval_tiny"


def port_in_range() -> int:
    for port in range(18300, 18340):
        if port_is_free("127.0.0.1", port):
            return port
    pytest.skip("no free port in 18300-18339")


@pytest.mark.slow
def test_make_accuracy_then_report_on_the_cpu_server(runs_dir, tiny_dense):
    port = port_in_range()
    env = base_env(runs_dir, MODEL=str(tiny_dense), PORT=str(port), TASKS="tiny_gsm8k", NUM_FEWSHOT="2",
                   DATASET_DIR=str(TINY_TASK))
    result = run_make("accuracy", env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    model_dir = runs_dir / tiny_dense.name
    run_dir = (model_dir / "latest-accuracy").resolve()
    record = json.loads((run_dir / "accuracy.json").read_text())
    assert record["verdict"] == "PASS" and record["status"] == "done"
    assert record["server"]["reused"] is False and record["server"]["readiness"]["state"] == "ready"
    assert record["server"]["stop"].startswith("stopped")
    task = record["tasks"][0]
    assert task["name"] == "tiny_gsm8k" and task["num_fewshot"] == 2 and task["samples"] == 4
    assert set(task["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert all(0.0 <= value <= 1.0 for value in task["metrics"].values())
    assert record["lm_eval_version"] == "0.4.13"
    assert record["serve"]["max_model_len"] and record["serve"]["tensor_parallel_size"] == 1
    for name in ("lm_eval.log", "lm_eval.sh", "serve.log", "command.sh"):
        assert (run_dir / name).is_file(), name
    assert "exact_match" in (run_dir / "lm_eval.log").read_text()  # lm-eval's own results table
    assert "--load-format" not in (run_dir / "command.sh").read_text(), "accuracy needs the real weights"
    assert list(recorded_servers(runs_dir)) == [], "the server it started must be stopped"
    assert f"{task['metrics']['exact_match,strict-match']}" in result.stdout

    report = run_make("report", base_env(runs_dir, MODEL=str(tiny_dense)), timeout=120)
    # written, but refused: no full-layer Stage B PASS (the helper exits 1; make says 2)
    assert report.returncode == 2 and "sign-off refused" in report.stderr, report.stderr
    config_path = model_dir / f"deliverables/tests/e2e/models/configs/{tiny_dense.name}.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert e2e.validate_e2e_config(config) == []
    assert {m["name"]: m["value"] for m in config["tasks"][0]["metrics"]} == task["metrics"]
    assert config["num_fewshot"] == 2
    text = (model_dir / "deliverables/report.zh.md").read_text()
    assert str(run_dir / "lm_eval.log") in text
    assert "没有通过的全层 Stage B" in text.splitlines()[2], "accuracy alone never signs off"
