"""The CI job of ci/ascend/bringup.yml runs the checklist's make targets: this test takes the
job's own `run:` lines from the workflow, fills in the matrix entry of a model the way GitHub
would, and runs them in order on the replay backend (a recorded vllm-ascend v0.11 start of
Qwen3-8B, served by helpers/replay at full speed) with a tiny checkpoint of that shape. Then the
job summary: the feature matrix, and on the next run which cells changed. The same lines also run
on the real vLLM CPU server with the generated tiny model (marked slow): that run is also the suite's
end-to-end accuracy check (lm-eval against the job's own server, then `make report`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_SHAPES, base_env, free_port, tiny_shaped
from helpers import e2e, serve

WORKFLOW = REPO / "ci" / "ascend" / "bringup.yml"
TINY_TASK = REPO / "tests" / "fixtures" / "lm_eval_tiny"
MAKE_STEPS = ["context", "triage", "stage-b", "all-features", "accuracy"]


def job_steps() -> tuple[dict, list[dict]]:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["bringup"]
    return job, [s for s in job["steps"] if "run" in s]


def resolve(text: str, entry: dict) -> str:
    """`${{ matrix.x }}` as GitHub fills it in from the matrix entry."""
    return re.sub(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", lambda m: str(entry[m.group(1)]), text)


def run_step(command: str, env: dict) -> subprocess.CompletedProcess:
    command = command.replace(".venv/bin/python", sys.executable)  # the venv make setup made
    return subprocess.run(["bash", "-e", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def check_the_recorded_start_timeline(model_dir: Path) -> None:
    """Stage B of the replayed v0.11 start: the graph capture's seconds and GiB and each phase as
    serve.log prints them (the recorded stamps: the replay keeps them)."""
    record = json.loads((model_dir / "latest-stage-b" / "evidence.json").read_text())
    lines = (model_dir / "latest-stage-b" / "serve.log").read_bytes().decode("utf-8", "replace").split("\n")
    timeline = record["timeline"]
    graph = timeline["graph_capture"]
    captured = re.search(r"Graph capturing finished in (\d+) secs, took ([\d.]+) GiB", lines[graph["line_no"] - 1])
    assert (graph["seconds"], graph["gib"]) == (float(captured.group(1)), float(captured.group(2)))
    stamp = re.compile(r" (\d\d-\d\d \d\d:\d\d:\d\d) \[")

    def seconds_at(line_no: int) -> float:
        found = next(stamp.search(lines[n - 1]) for n in range(line_no, 0, -1) if stamp.search(lines[n - 1]))
        return datetime.strptime(f"2025-{found.group(1)}", "%Y-%m-%d %H:%M:%S").timestamp()

    zero = seconds_at(next(n for n, line in enumerate(lines, start=1) if stamp.search(line)))
    seen = [p for p in timeline["phases"] if p["status"] == "seen" and p["name"] != "process up"]
    names = [p["name"] for p in seen]
    assert names.index("graph captured") < names.index("ready") < names.index("replay seen")
    for phase in seen:
        assert phase["end_s"] - (timeline["phases"][0]["duration_s"] or 0.0) == seconds_at(phase["line_no"]) - zero
    assert record["log_scan"]["ready_line"] <= next(p["line_no"] for p in seen if p["name"] == "replay seen")


def run_the_job(tmp_path: Path, entry: dict, accuracy_always: bool = False,
                **backend: str) -> tuple[dict, list[dict], dict, bool]:
    """The job's `run:` lines in order, with the matrix entry filled in as GitHub would, on a
    backend of the test's choice (the runner's would be ascend); returns (job, steps, env, lm-eval
    was there to run the accuracy step). The accuracy step is left out where lm-eval is not
    installed, unless `accuracy_always`: then `make accuracy` installs it, as on a fresh machine."""
    job, steps = job_steps()
    make_steps = [s for s in steps if s["run"].startswith("make ") and s["run"] != "make setup"]
    assert [s["run"].split()[1] for s in make_steps] == MAKE_STEPS
    assert all('JUNIT="$JUNIT_DIR/' in s["run"] for s in make_steps)
    runs = tmp_path / "runs"
    env = base_env(runs, PORT=str(free_port()), DATASET_DIR=str(TINY_TASK), NUM_FEWSHOT="2", **backend)
    env.update({name: resolve(str(value), entry) for name, value in job["env"].items()})
    # the runner's mounts (/bringup-runs, junit/ in the checkout) become the test's own directories
    env.update({"RUNS_DIR": str(runs), "JUNIT_DIR": str(tmp_path / "junit"),
                "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md")})  # a file GitHub shows
    env.pop("PYTHONPATH")
    have_lm_eval = accuracy_always or subprocess.run([sys.executable, "-c", "import lm_eval"],
                                                     capture_output=True).returncode == 0
    try:
        for step in steps:
            if step["run"] == "make setup":
                continue
            name = step["name"]
            if name == "accuracy" and not have_lm_eval:
                continue  # installed on first use by `make accuracy` (the CPU run of this job: accuracy_always)
            result = run_step(resolve(step["run"], entry), env)
            assert result.returncode == 0, f"{name}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    finally:
        serve.stop_recorded(runs, say=lambda _line: None)
    return job, steps, env, have_lm_eval


def test_the_job_runs_the_checklist_make_targets_and_summarises_the_matrix(tmp_path):
    checkpoint = tiny_shaped(tmp_path / "models" / "Qwen3-8B", "qwen3-dense")
    assert "qwen3-dense" in TINY_SHAPES
    entry = {"name": "Qwen3-8B", "path": str(checkpoint), "served_name": "Qwen3-8B", "tp": 1,
             "tasks": "tiny_gsm8k", "limit": ""}
    job, steps, env, have_lm_eval = run_the_job(tmp_path, entry, BACKEND="replay", REPLAY_SCENARIO="v0.11-qwen3-8b",
                                                REPLAY_SPEED="0", READY_TIMEOUT="120")
    runs, junit, step_summary = Path(env["RUNS_DIR"]), Path(env["JUNIT_DIR"]), Path(env["GITHUB_STEP_SUMMARY"])
    model_dir = runs / "Qwen3-8B"
    summary = step_summary.read_text()
    assert (model_dir / "context.json").is_file() and (model_dir / "triage.json").is_file()
    for step in MAKE_STEPS[2:] if have_lm_eval else MAKE_STEPS[2:4]:
        if step == "accuracy":
            continue  # lm-eval writes accuracy.json, no JUnit of its own
        cases = ET.parse(junit / f"{step}.xml").getroot().findall("testcase")
        assert cases, step
    assert "| stage-b | PASS |" in summary and "| aclgraph | PASS |" in summary
    assert "First run of this model: nothing to compare." in summary
    matrix_cases = {c.get("name") for c in ET.parse(junit / "matrix.xml").getroot().findall("testcase")}
    assert {"stage-a", "stage-b", "ep", "flashcomm1", "mtp"} <= matrix_cases
    assert "graph captured" in summary and "replay seen" in summary, "the phases of the starts"
    check_the_recorded_start_timeline(model_dir)

    # the next run: the matrix of this one is its before; nothing changed, and then one cell did
    step_summary.unlink()
    for step in ("the matrix before this run", "job summary"):
        command = next(s["run"] for s in steps if s["name"] == step)
        result = run_step(resolve(command, entry), env)
        assert result.returncode == 0, result.stderr
    assert "No cell changed since the last run" in step_summary.read_text()
    matrix = json.loads((model_dir / "matrix.json").read_text())
    matrix["stages"]["stage-b"]["status"] = "FAIL"
    (model_dir / "matrix.json").write_text(json.dumps(matrix))
    step_summary.unlink()
    result = run_step(resolve(next(s["run"] for s in steps if s["name"] == "job summary"), entry), env)
    assert result.returncode == 0 and "| stage-b | PASS | FAIL |" in step_summary.read_text()
    assert not list(serve.recorded_servers(runs)), "no server left behind"
    if not have_lm_eval:
        pytest.skip("every step ran but accuracy: lm-eval is not installed yet (`make accuracy` installs it on "
                    "first use, as test_the_job_steps_pass_on_the_cpu_backend_and_accuracy_feeds_the_report does)")


@pytest.mark.parametrize("bad,line", [
    ("models: []\n", "no `models:` list"),
    ("models:\n  - {name: a, path: /m, served_name: a, tasks: gsm8k, tp: two}\n", "tp must be a positive integer"),
    ("models:\n  - {name: a, path: /m, tasks: gsm8k}\n", "missing ['served_name']"),
])
def test_a_wrong_models_list_stops_the_pipeline_in_one_line(tmp_path, bad, line):
    models = tmp_path / "models.yaml"
    models.write_text(bad)
    result = subprocess.run([sys.executable, "-m", "helpers.ci", "matrix", str(models)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and line in result.stderr, result.stderr


@pytest.mark.slow(seconds=145)
def test_the_job_steps_pass_on_the_cpu_backend_and_accuracy_feeds_the_report(tmp_path, tiny_dense):
    """The same `run:` lines on the real vLLM CPU server with the generated tiny model: every step
    exits 0, Stage B passes, each make step leaves its JUnit file and the summary its matrix.
    The accuracy step starts a Stage B server of its own (all-features stopped its servers), runs
    lm-eval offline on the tiny local gsm8k-shaped task and stops the server; `make report` turns
    the result into a valid e2e YAML. The score of a random tiny model means nothing: the test
    asserts the pipeline and lm-eval's metric names, not the value."""
    entry = {"name": "tiny-dense", "path": str(tiny_dense), "served_name": "tiny-dense", "tp": 1,
             "tasks": "tiny_gsm8k", "limit": ""}
    _job, _steps, env, _ = run_the_job(tmp_path, entry, accuracy_always=True, BACKEND="cpu")
    runs = Path(env["RUNS_DIR"])
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert "| stage-b | PASS |" in summary and "First run of this model: nothing to compare." in summary
    for step in MAKE_STEPS[2:4]:
        assert ET.parse(Path(env["JUNIT_DIR"]) / f"{step}.xml").getroot().findall("testcase"), step
    assert not list(serve.recorded_servers(runs)), "no server left behind"

    model_dir = runs / "tiny-dense"
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

    report_env = {k: v for k, v in env.items() if k not in ("JUNIT", "GITHUB_STEP_SUMMARY")}
    report = subprocess.run(["make", "-s", "report", f"MODEL={tiny_dense}"], cwd=REPO, env=report_env,
                            capture_output=True, text=True, timeout=120)
    # written, but refused: Stage B passed, but sign-off also needs a capacity result (or its reason)
    assert report.returncode == 2 and "sign-off refused" in report.stderr, report.stdout + report.stderr
    config_path = model_dir / "deliverables/tests/e2e/models/configs/tiny-dense.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert e2e.validate_e2e_config(config) == []
    assert {m["name"]: m["value"] for m in config["tasks"][0]["metrics"]} == task["metrics"]
    assert config["num_fewshot"] == 2
    text = (model_dir / "deliverables/report.zh.md").read_text()
    assert str(run_dir / "lm_eval.log") in text
