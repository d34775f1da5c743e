"""The whole checklist through `make`, on the replay backend: recorded vllm-ascend starts of every
era (v0.11.x, v0.13.x, a 0.2x release, main), decided by the ascend rules (BACKEND=replay extends
ascend). Each test runs make targets the way a user does, on a tiny checkpoint shaped like the
scenario's model, and checks the verdict, the category and the evidence a user reads.

Not slow: a replayed start takes a fraction of a second at REPLAY_SPEED=0 (the busy/hang tests
play at the recorded pace). One RUNS_DIR for the module, like a user's runs/ with many models;
every test checks that no server it started is left, also when it fails.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_SHAPES, base_env, free_port, linked_copy, run_make, tiny_shaped
from helpers import serve, settings as settings_module, triage
from helpers import model as model_module

FIXTURE_SCENARIOS = REPO / "tests" / "fixtures" / "replay"
NO_RUN = ("NOT_APPLICABLE", "CHECKPOINT_MISSING", "FRAMEWORK_UNSUPPORTED")


@dataclass
class Workbench:
    root: Path
    runs: Path
    shapes: dict[str, Path]

    def checkpoint(self, shape: str, name: str) -> Path:
        """The scenario's model under its own name (its own runs/<name>/), weights hard-linked."""
        return linked_copy(self.shapes[shape], self.root / "models" / name)

    def env(self, scenario: str, **extra: str) -> dict[str, str]:
        env = base_env(self.runs, **{"BACKEND": "replay", "REPLAY_SCENARIO": scenario, "REPLAY_SPEED": "0",
                                     "PORT": str(free_port()), "READY_TIMEOUT": "120", **extra})
        if "PYTHONPATH" not in extra:  # a user's shell: make's scripts put the repo on the helper's path
            env.pop("PYTHONPATH")
        return env

    def make(self, target: str, env: dict[str, str], model: Path, *variables: str):
        return run_make(target, env, f"MODEL={model}", *variables, timeout=240)

    def evidence(self, model: Path, step: str) -> dict:
        return json.loads((self.runs / model.name / f"latest-{step}" / "evidence.json").read_text())

    def passes(self, target: str, env: dict[str, str], model: Path, *variables: str) -> dict:
        """`make <target>` exits 0 (PASS or a no-run verdict); its evidence record."""
        result = self.make(target, env, model, *variables)
        assert result.returncode == 0, result.stdout + result.stderr
        return self.evidence(model, target)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay-checklist")
    runs = root / "runs"
    runs.mkdir()
    shapes = {shape: tiny_shaped(root / "shapes" / shape, shape) for shape in TINY_SHAPES}
    # Test set-up, not a check: the weight-coverage answer of each shape goes into runs/.cache once
    # (it builds the model on the meta device), so each make's in-process triage reuses it.
    for path in shapes.values():
        loaded = settings_module.load({"RUNS_DIR": str(runs), "MODEL": str(path), "BACKEND": "cpu"})
        triage.triage(loaded, model_module.resolve(loaded), registry=False, backend="cpu")
    yield Workbench(root, runs, shapes)


@pytest.fixture(autouse=True)
def nothing_left_behind(bench):
    yield
    leaked = [record.pid for _, record in serve.recorded_servers(bench.runs) if record.verified_members()]
    serve.stop_recorded(bench.runs, say=lambda _line: None)
    assert not leaked, f"servers left running: {leaked}"


def failed_with(result, code: int) -> bool:
    """GNU make reports a recipe's exit status as `Error N` (its own exit is 2)."""
    return result.returncode == 2 and f"Error {code}" in result.stderr


def log_line(record: dict, number: int) -> str:
    lines = (Path(record["run_dir"]) / "serve.log").read_text(errors="replace").splitlines()
    return lines[number - 1]


# --- v0.11.x: a healthy dense model --------------------------------------------------------------

def test_v011_dense_stages_pass_on_the_replay_line_and_features_say_why_not(bench):
    model = bench.checkpoint("qwen3-dense", "Qwen3-8B")
    env = bench.env("v0.11-qwen3-8b")
    for target in ("stage-a", "stage-b"):
        result = bench.make(target, env, model)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"PASS {target} Qwen3-8B" in result.stdout
        record = bench.evidence(model, target)
        graph = record["graph"]
        assert (graph["status"], graph["mode"], graph["key"]) == ("PASS", "default", "graph_replay")
        # the replay line comes after the first request; the capture lines before it do not count
        assert graph["line_no"] > record["log_scan"]["ready_line"]
        assert "Replaying aclgraph" in log_line(record, graph["line_no"])
        assert "Capturing ACL graphs" in (record["log_evidence"].get("graph_capture") or "")
    # TP unset: triage's plan for the recorded box (one 910B4); the length: the serve template capped
    tp, length = record["defaults"]["tp"], record["defaults"]["max_model_len"]
    assert tp["value"] == 1 and tp["source"].startswith("from triage: A2: workflow TP 8, 1 visible NPUs")
    assert (length["value"], "capped by max_position_embeddings 40960" in length["source"]) == (40960, True)
    assert "--tensor-parallel-size 1" in record["command"]["shell"] and "--max-model-len 40960" in record["command"]["shell"]
    assert "tp 1: from triage" in result.stdout
    verdicts = {}
    for gate in ("ep", "flashcomm1", "mtp", "xlite"):
        record = bench.passes(gate, env, model)
        assert record["server_started"] is False
        verdicts[gate] = (record["verdict"], record["reason"])
    assert verdicts["ep"][0] == verdicts["flashcomm1"][0] == verdicts["mtp"][0] == "NOT_APPLICABLE"
    assert verdicts["xlite"][0] == "FRAMEWORK_UNSUPPORTED" and "xlite" in verdicts["xlite"][1]


def test_a_start_without_the_replay_line_fails_graph_mode_with_its_own_hint(bench):
    model = bench.checkpoint("qwen3-dense", "Qwen3-8B-noreplay")
    env = bench.env(str(FIXTURE_SCENARIOS / "v0.11-qwen3-8b-no-replay.yaml"))
    result = bench.make("stage-a", env, model)
    assert failed_with(result, 1), result.stdout + result.stderr
    record = bench.evidence(model, "stage-a")
    assert (record["verdict"], record["category"]) == ("FAIL", "graph-not-replayed")
    assert all(r["ok"] for r in record["requests"])  # the server itself was fine
    assert "no 'Replaying aclgraph' or 'run_fullgraph with num_tokens=' line after the first request" in record["reason"]
    assert "startup capture" in record["reason"]
    assert "hint: Ready and every request answered" in result.stdout
    assert f"next: make eager MODEL={model}" in result.stdout
    # eager turns graph mode off by request: nothing to prove, the run passes
    graph = bench.passes("eager", env, model)["graph"]
    assert (graph["status"], graph["mode"]) == ("NOT_APPLICABLE", "eager")


def test_kv_cache_too_small_quotes_the_estimate_and_the_fitting_command_and_capacity_feeds_the_default(bench):
    model = bench.checkpoint("qwen3-dense", "Qwen3-8B-128k")
    env = bench.env("v0.11-qwen3-8b")
    result = bench.make("stage-a", env, model, "MAX_MODEL_LEN=131072")
    assert failed_with(result, 1), result.stdout + result.stderr
    record = bench.evidence(model, "stage-a")
    assert (record["verdict"], record["category"]) == ("FAIL", "kv-too-small")
    assert "vLLM estimates the maximum model length at 72448" in record["reason"]
    assert f"next: MAX_MODEL_LEN=72448 make stage-a MODEL={model}" in result.stdout
    # the printed command fits
    assert bench.make("stage-a", env, model, "MAX_MODEL_LEN=72448").returncode == 0
    # capacity confirms the estimate; with MAX_MODEL_LEN unset the next start uses it (serve template)
    result = bench.make("capacity", env, model, "MAX_MODEL_LEN=131072")
    capacity = json.loads((bench.runs / model.name / "capacity.json").read_text())
    assert (capacity["practical_max_len"], capacity["practical_source"]) == (72448, "vllm-estimate-confirmed")
    length = bench.passes("stage-a", env, model)["defaults"]["max_model_len"]
    assert length["value"] == 72448 and length["source"].startswith("capacity.json practical max length")


# --- v0.11.x MoE: the default set, the matrix, torchair, false-ready ----------------------------

def test_all_features_on_the_moe_scenario_links_every_matrix_cell_to_a_log_line(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B")
    env = bench.env("v0.11-qwen3-30b-a3b")
    result = bench.make("all-features", env, model)
    assert result.returncode == 0, result.stdout + result.stderr
    # feature-first: Stage A, one Stage B with EP on, flashcomm1 on its own: three starts, not five
    assert len(started_runs(bench, model)) == 3 and "(3 server start(s) in this make all-features)" in result.stdout
    headers = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("== ")]
    assert headers == ["stage-a", "mtp", "stage-b", "flashcomm1", "matrix"], result.stdout
    assert "== stage-b (feature-first: ep)" in result.stdout
    matrix = json.loads((bench.runs / model.name / "matrix.json").read_text())
    features = matrix["features"]
    # EP's cell is decided by the feature-first Stage B, from its own line there
    assert features["ep"]["run_dir"] == matrix["stages"]["stage-b"]["run_dir"]
    assert features["aclgraph"]["status"] == features["ep"]["status"] == "PASS"
    assert features["flashcomm1"]["status"] == "ACCEPTED"  # v0.11 logs nothing when it takes effect here
    assert (features["mtp"]["status"], features["multimodal"]["status"]) == ("NOT_APPLICABLE", "NOT_APPLICABLE")
    cells = list(matrix["stages"].values()) + list(features.values())
    linked = 0
    for cell in cells:
        if cell["status"] == "NOT_RUN" or (cell["status"] in NO_RUN and cell["log"] is None):
            continue  # decided without a server: no log to point at
        assert cell["log"] and cell["line_no"], cell
        lines = Path(cell["log"]).read_text(errors="replace").splitlines()
        assert 1 <= cell["line_no"] <= len(lines), cell
        text = lines[cell["line_no"] - 1]
        evidence = cell["evidence_line"] or ""
        if evidence.startswith("ready (") or "in the server environment" in evidence:
            assert "Application startup complete" in text, (cell, text)  # the start that served it
        elif evidence and not evidence.startswith("image "):
            assert evidence.strip() in text or text.strip() in evidence, (cell, text)
        linked += 1
    assert linked >= 6
    assert "_EP0 pid=" in features["ep"]["evidence_line"]  # an EP worker (fact ep-worker-prefix)
    assert "serve.log:" in (bench.runs / model.name / "matrix.md").read_text()
    # again: the Stage A and Stage B that just passed with the same command are reused, and said so
    again = bench.make("all-features", env, model)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "== stage-a: reused: PASS stage-a from" in again.stdout and "== stage-b: reused: PASS stage-b" in again.stdout
    assert "(1 server start(s) in this make all-features)" in again.stdout and len(started_runs(bench, model)) == 4
    # FORCE=1 reruns them
    forced = bench.make("all-features", env, model, "FORCE=1")
    assert forced.returncode == 0 and "(3 server start(s)" in forced.stdout and "reused" not in forced.stdout


def started_runs(bench, model: Path) -> list[Path]:
    """Run directories of this model whose server was started (a serve.log was written)."""
    return sorted(p.parent for p in (bench.runs / model.name).glob("*/serve.log") if not p.parent.is_symlink())


def test_all_features_decides_ep_and_mtp_from_their_own_lines_in_one_stage_b(bench):
    model = bench.checkpoint("deepseek-v3", "DeepSeek-V3-features")
    result = bench.make("all-features", bench.env("v0.23-deepseek-v3"), model)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(started_runs(bench, model)) == 3 and "== stage-b (feature-first: ep, mtp)" in result.stdout
    matrix = json.loads((bench.runs / model.name / "matrix.json").read_text())
    stage_b = bench.evidence(model, "stage-b")
    assert stage_b["features_on"] == ["ep", "mtp"] and "--enable-expert-parallel" in stage_b["command"]["argv"]
    for feature, text in (("ep", "Expert parallelism is enabled."), ("mtp", None)):
        cell = matrix["features"][feature]
        assert cell["status"] == "PASS" and cell["run_dir"] == stage_b["run_dir"], cell
        line = log_line(stage_b, cell["line_no"])
        assert cell["evidence_line"].strip() in line and (text is None or text in line)
        assert stage_b["decides"][feature]["line_no"] == cell["line_no"]
    # the two features' lines are different lines of the one log: each decided by its own
    assert matrix["features"]["ep"]["line_no"] != matrix["features"]["mtp"]["line_no"]


def test_one_breaking_feature_is_bisected_and_named_within_the_start_budget(bench, tmp_path):
    """A generated fixture: the DeepSeek-V3 recording whose worker-start failure of an unknown
    speculative method (there for mlp_speculator) is here what `"method":"mtp"` gets."""
    scenario = tmp_path / "v0.23-deepseek-v3-mtp-breaks.yaml"
    data = yaml.safe_load((REPO / "helpers/replay/scenarios/v0.23-deepseek-v3.yaml").read_text())
    block = next(b for b in data["startup"] if b["id"] == "unknown-spec-method")
    block["when"] = {"flag_json": {"flag": "--speculative-config", "key": "method", "in": ["mtp"]}}
    data["name"] = scenario.stem
    scenario.write_text("# Sources: helpers/replay/scenarios/v0.23-deepseek-v3.yaml (every line and its source)\n"
                        + yaml.safe_dump(data, sort_keys=False))
    model = bench.checkpoint("deepseek-v3", "DeepSeek-V3-mtp-breaks")
    result = bench.make("all-features", bench.env(str(scenario)), model)
    assert failed_with(result, 1), result.stdout + result.stderr
    k = 2  # EP and MTP in the feature-first Stage B
    assert len(started_runs(bench, model)) <= 3 + math.ceil(math.log2(k)) + 1
    assert "isolation: culprit mtp" in result.stdout and "next: make ladder" in result.stdout
    matrix = json.loads((bench.runs / model.name / "matrix.json").read_text())
    mtp, ep = matrix["features"]["mtp"], matrix["features"]["ep"]
    assert mtp["status"] == "FAIL" and "Unknown speculative decoding method: mtp" in mtp["evidence_line"]
    failing = json.loads((Path(mtp["run_dir"]) / "evidence.json").read_text())
    assert failing["features_on"] == ["ep", "mtp"] and failing["verdict"] == "FAIL"
    assert mtp["evidence_line"] in log_line(failing, mtp["line_no"])
    # EP is decided by a passing probe that had it on, from its own line there
    probe = json.loads((Path(ep["run_dir"]) / "evidence.json").read_text())
    assert ep["status"] == "PASS" and probe["features_on"] == ["ep"] and probe["verdict"] == "PASS"
    assert ep["evidence_line"].strip() in log_line(probe, ep["line_no"])
    assert matrix["stages"]["stage-b"]["status"] == "PASS"  # the base command works


def test_no_stage_b_after_a_stage_a_that_failed_at_startup(bench):
    model = bench.checkpoint("qwen3-dense", "Qwen3-8B-oom")
    result = bench.make("all-features", bench.env("v0.11-oom-startup"), model)
    assert failed_with(result, 1), result.stdout + result.stderr
    assert "== stage-b: not started: Stage A failed at startup" in result.stdout
    assert len(started_runs(bench, model)) == 1 and "(1 server start(s)" in result.stdout


def test_torchair_graph_mode_on_an_old_image_is_recognised_not_a_missing_aclgraph(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-torchair")
    env = bench.env("v0.11-qwen3-30b-a3b")
    result = bench.make("stage-a", env, model,
                        """EXTRA_ARGS=--additional-config '{"torchair_graph_config":{"enabled":true}}'""")
    assert result.returncode == 0, result.stdout + result.stderr
    graph = bench.evidence(model, "stage-a")["graph"]
    assert (graph["status"], graph["mode"], graph["name"]) == ("PASS", "torchair", "torchair graph")
    assert "Batchsize 4 is compiled successfully: 3/3." in graph["line"]
    assert "torchair-dropped" in graph["reason"] and "graph mode (torchair graph)" in result.stdout


def test_false_ready_names_the_workers_exception_line(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-false-ready")
    result = bench.make("stage-a", bench.env("v0.11-false-ready"), model)
    assert failed_with(result, 1), result.stdout + result.stderr
    record = bench.evidence(model, "stage-a")
    assert (record["verdict"], record["category"]) == ("FAIL", "false-ready")
    cause = record["root_cause"]
    # the worker's own traceback names it (the CANN allocation failure), not EngineCore's or the API
    # server's wrappers that follow
    assert cause["text"].startswith("(Worker_DP0_TP0 pid=1355611) ERROR") and "EL0004" in cause["text"]
    assert "EngineDeadError" not in cause["text"] and "EngineCore" not in cause["text"]
    assert cause["line_no"] > record["log_scan"]["ready_line"]
    assert f"root cause (serve.log line {cause['line_no']})" in result.stdout


# --- v0.13.x: flashcomm1 needs TP from triage --------------------------------------------------

def test_v013_moe_gates_take_tp_from_triage(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-v013")
    env = bench.env("v0.13-qwen3-30b-a3b")
    record = bench.passes("ep", env, model)
    assert record["verdict"] == "PASS" and "_EP0 pid=" in record["feature_evidence"]["line"]
    assert record["defaults"]["tp"]["value"] == 8 and "--tensor-parallel-size 8" in record["command"]["shell"]
    record = bench.passes("flashcomm1", env, model)
    assert record["verdict"] == "ACCEPTED" and "accepted, no runtime evidence" in record["reason"]
    # TP 1 (what the old default was) is refused by v0.13's own assertion: predicted, no start
    result = bench.make("flashcomm1", env, model, "TP=1")
    assert failed_with(result, 1)
    record = bench.evidence(model, "flashcomm1")
    assert (record["verdict"], record["server_started"]) == ("FAIL", False)
    assert "is only supported when tp_size > 1" in record["reason"]
    assert bench.passes("mtp", env, model)["verdict"] == "NOT_APPLICABLE"


def test_xlite_where_it_is_installed_but_the_architecture_is_not_covered(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-xlite013")
    record = bench.passes("xlite", bench.env("v0.13-xlite-qwen3-30b-a3b"), model)
    assert record["verdict"] == "FRAMEWORK_UNSUPPORTED" and record["server_started"] is False
    assert "does not cover architecture Qwen3MoeForCausalLM" in record["reason"]
    assert "xlite-architectures-v013" in record["reason"]


# --- 0.2x: stream exhaustion, the ladder, xlite, soft partitions, context parallel, DeepSeek ------

def test_stream_exhaustion_ladder_stops_at_eager_and_says_the_failure_moved_away(bench):
    model = bench.checkpoint("qwen3-moe-256k", "Qwen3-30B-A3B-2507")
    env = bench.env("v0.20-stream-exhaustion")
    result = bench.make("stage-a", env, model)
    assert failed_with(result, 1)
    record = bench.evidence(model, "stage-a")
    assert (record["verdict"], record["category"]) == ("FAIL", "stream-exhaustion")
    assert '"cudagraph_mode\\":\\"FULL_DECODE_ONLY' in record["diagnosis"]["next_command"]
    result = bench.make("ladder", env, model, "STAGE=a")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((bench.runs / model.name / "latest-ladder" / "ladder.json").read_text())
    rows = {row["rung"]: row for row in summary["rungs"]}
    # fewer captures (graph-keeping) come before eager; here the capture dies with them too
    assert [rows[r]["verdict"] for r in ("reproduce", "xlite", "graph-keeping", "eager")] == [
        "FAIL", "SKIPPED", "FAIL", "PASS"]
    assert result.stdout.count("next: ") == 1 and "ACCEPT_FALLBACK=eager make report" in result.stdout
    assert rows["xlite"]["reason"].startswith("FRAMEWORK_UNSUPPORTED")
    assert summary["fixed_by"] == "eager" and summary["deterministic"] is True
    assert summary["moved_away"]["rung"] == "eager" and "stream-exhaustion" in summary["moved_away"]["from"]
    assert "fixed by rung: eager" in result.stdout and "failure moved away at rung eager" in result.stdout


def test_context_parallel_runs_are_never_told_to_capture_full_graphs(bench):
    model = bench.checkpoint("qwen3-moe-256k", "Qwen3-30B-A3B-cp")
    result = bench.make("stage-a", bench.env("v0.20-stream-exhaustion"), model,
                        "EXTRA_ARGS=--prefill-context-parallel-size 2")
    assert failed_with(result, 1)
    diagnosis = bench.evidence(model, "stage-a")["diagnosis"]
    assert diagnosis["category"] == "stream-exhaustion"
    command = diagnosis["next_command"]
    assert '\\"cudagraph_mode\\":\\"PIECEWISE\\"' in command and "FULL" not in command
    assert "--prefill-context-parallel-size 2" in command  # the run's own EXTRA_ARGS are kept
    assert "context-parallel run" in diagnosis["hint_en"]


def test_xlite_gate_passes_and_is_the_rung_before_eager(bench):
    model = bench.checkpoint("qwen3-moe-256k", "Qwen3-30B-A3B-xlite")
    env = bench.env("v0.20-xlite-qwen3-30b-a3b")
    record = bench.passes("xlite", env, model)
    assert record["verdict"] == "PASS"
    assert "xlite runtime pool size" in record["feature_evidence"]["line"]
    graph = record["graph"]
    assert (graph["status"], graph["mode"], graph["name"]) == ("PASS", "xlite", "XliteGraph")
    assert "logs no line per request" in graph["reason"]
    result = bench.make("ladder", env, model, "STAGE=a")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((bench.runs / model.name / "latest-ladder" / "ladder.json").read_text())
    assert [r["rung"] for r in summary["rungs"]] == ["reproduce", "xlite"] and summary["fixed_by"] == "xlite"


def test_a_soft_partitioned_npu_is_named_before_the_start(bench):
    model = bench.checkpoint("qwen3-moe-256k", "Qwen3-30B-A3B-vnpu")
    env = bench.env("v0.20-soft-partition")
    result = bench.make("stage-a", env, model)
    assert failed_with(result, 1)
    out = result.stdout
    warning = out.index("warning: soft-partitioned NPU (/etc/ld.so.preload names libvruntime.so")
    assert warning < out.index("starting replay server")
    # triage says it too (the in-process triage the start made; `make triage` prints the same list)
    warnings = json.loads((bench.runs / model.name / "triage.json").read_text())["warnings"]
    assert any("PIECEWISE graph capture is unsupported here" in w for w in warnings)
    record = bench.evidence(model, "stage-a")
    assert record["category"] == "stream-exhaustion" and "FULL_DECODE_ONLY" in record["warnings"][0]
    # eager captures nothing: no warning
    result = bench.make("eager", env, model)
    assert result.returncode == 0 and "soft-partitioned" not in result.stdout


def test_deepseek_v3_on_v023_mtp_flashcomm1_and_ep(bench):
    model = bench.checkpoint("deepseek-v3", "DeepSeek-V3")
    env = bench.env("v0.23-deepseek-v3")
    for gate in ("mtp", "flashcomm1", "ep"):
        record = bench.passes(gate, env, model)
        assert record["verdict"] == "PASS", (gate, record["reason"])
        assert record["graph"]["status"] == "PASS"
    mtp = bench.evidence(model, "mtp")
    assert '"method":"mtp"' in mtp["command"]["shell"] and mtp["feature_metrics"]
    flashcomm = bench.evidence(model, "flashcomm1")
    assert "enable_flashcomm1" in flashcomm["command"]["shell"] and "--enable-expert-parallel" in flashcomm["command"]["shell"]


def test_an_mtp_config_without_mtp_weights_is_checkpoint_missing(bench):
    model = bench.checkpoint("deepseek-v3-no-mtp", "DeepSeek-V3-no-mtp")
    record = bench.passes("mtp", bench.env("v0.23-deepseek-v3"), model)
    assert (record["verdict"], record["server_started"]) == ("CHECKPOINT_MISSING", False)
    assert "num_nextn_predict_layers=1" in record["reason"] and "no MTP layers" in record["reason"]


def test_vl_ladder_moves_from_dynamo_to_the_processor_and_text_only_isolates_it(bench):
    model = bench.checkpoint("minicpmv", "MiniCPM-V")
    env = bench.env("v0.23-vl-minicpmv")
    result = bench.make("ladder", env, model, "STAGE=a")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((bench.runs / model.name / "latest-ladder" / "ladder.json").read_text())
    rows = [(row["rung"], row["verdict"]) for row in summary["rungs"]]
    assert rows == [("reproduce", "FAIL"), ("xlite", "SKIPPED"), ("graph-keeping", "SKIPPED"), ("eager", "FAIL"),
                    ("dynamo-disable", "FAIL"), ("text-only", "PASS")], rows
    # text-only switches the image path off: it isolates the failure there, it is no fix
    assert summary["fixed_by"] is None and summary["isolated_by"]["rung"] == "text-only"
    assert "isolated to the multimodal path" in result.stdout
    assert summary["moved"] and summary["moved"][-1]["to_rung"] == "dynamo-disable"
    assert "failure moved:" in result.stdout


# --- main ---------------------------------------------------------------------------------------

def test_main_flashcomm1_is_gone_and_the_stages_pass(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-main")
    env = bench.env("main-qwen3-30b-a3b")
    record = bench.passes("flashcomm1", env, model)
    assert record["verdict"] == "FRAMEWORK_UNSUPPORTED" and "PR #13946" in record["reason"]
    assert bench.passes("stage-b", env, model)["graph"]["status"] == "PASS"
    assert bench.passes("ep", env, model)["verdict"] == "PASS"


# --- environment fidelity and slow-is-not-dead -----------------------------------------------------

def test_the_box_pythonpath_reaches_the_server_and_the_toolkit_does_not(bench):
    model = bench.checkpoint("qwen3-dense", "Qwen3-8B-env")
    box_path = "/usr/local/Ascend/ascend-toolkit/latest/python/site-packages:/opt/box/lib"
    env = bench.env("v0.11-qwen3-8b", PYTHONPATH=box_path, REPLAY_SPEED="1")
    import subprocess

    process = subprocess.Popen(["make", "-s", "stage-a", f"MODEL={model}"], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        environ = None
        deadline = time.monotonic() + 60
        while environ is None and time.monotonic() < deadline and process.poll() is None:
            for _, record in serve.recorded_servers(bench.runs):
                if record.verified_members() and Path(record.run_dir).parent.name == model.name:
                    raw = Path(f"/proc/{record.pid}/environ").read_bytes()
                    environ = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
            time.sleep(0.05)
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert environ is not None, "never saw the started server"
    assert environ.get("PYTHONPATH") == box_path
    assert str(REPO) not in environ.get("PYTHONPATH", "")
    assert environ.get("HCCL_OP_EXPANSION_MODE") == "AIV"  # and the profile's env on top
    assert process.returncode == 0, out


def test_a_long_busy_silence_is_not_a_stall_but_a_sleeping_hang_is(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-slow")
    # graph capture: 21 recorded seconds of silence with the CPU busy (x 0.05 scale / 0.5 speed = 2.1 s)
    result = bench.make("stage-a", bench.env("v0.11-qwen3-30b-a3b", REPLAY_SPEED="0.5", STALL_TIMEOUT="1"), model)
    assert result.returncode == 0, result.stdout + result.stderr
    readiness = bench.evidence(model, "stage-a")["readiness"]
    assert readiness["state"] == "ready" and readiness["silent_busy_s"] >= 1
    hang = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-hang")
    started = time.monotonic()
    result = bench.make("stage-a", bench.env("v0.11-hccl-init-hang", STALL_TIMEOUT="2"), hang)
    assert failed_with(result, 1)
    record = bench.evidence(hang, "stage-a")
    assert (record["verdict"], record["category"]) == ("FAIL", "stalled")
    assert "no new log line and no CPU time for 2 s" in record["reason"]
    assert time.monotonic() - started < 60
    assert "SIGKILL" in record["stop"]  # a starting server ignores SIGTERM: killed, not left behind


def test_capacity_baseline_is_served_by_make_serve_without_a_start_and_hygiene_stops_it(bench):
    model = bench.checkpoint("qwen3-dense", "Qwen3-8B-serve")
    env = bench.env("v0.11-qwen3-8b")
    served = bench.passes("serve", env, model)
    assert served["verdict"] == "PASS" and "left running" in served["stop"]
    record = next(r for _, r in serve.recorded_servers(bench.runs) if r.run_dir == served["run_dir"])
    assert record.is_alive_and_ours()
    result = bench.make("capacity", env, model)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "served by our live server" in result.stdout and "no start" in result.stdout
    assert started_runs(bench, model) == [Path(served["run_dir"])]  # no start added
    cell = json.loads((bench.runs / model.name / "capacity.json").read_text())["cells"][0]
    assert cell["verdict"] == "PASS" and cell["shared_server"]["run_dir"] == served["run_dir"]
    assert cell["shared_server"]["compared"] == "argv, env, checkpoint, roots"
    assert cell["log"] == str(Path(served["run_dir"]) / "serve.log") and cell["kv_cache_tokens"]
    assert record.is_alive_and_ours()  # still serving after the step that shared it
    result = bench.make("hygiene", env, model)
    assert result.returncode == 0 and f"stopped our server pid {record.pid}" in result.stdout
    assert not record.is_alive_and_ours()


# --- runs at once on disjoint NPU groups (an 8-NPU A2 machine, TP 4: two groups) -----------------

def _slot_of(record: dict) -> tuple[int, str, str]:
    argv, env = record["command"]["argv"], record["command"]["env"]
    return int(argv[argv.index("--port") + 1]), env.get("ASCEND_RT_VISIBLE_DEVICES", ""), env.get("HCCL_IF_BASE_PORT", "")


def test_capacity_cells_run_at_once_never_sharing_a_port_npu_hccl_range_or_run_dir(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-parallel")
    result = bench.make("capacity", bench.env("v0.11-qwen3-30b-a3b"), model, "SWEEP=16 32 64", "TP=4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[set] 3 runs, 2 at once: 2 disjoint groups of TP 4 (8 of 8 NPUs free)" in result.stdout
    sets = list((bench.runs / model.name).glob("*-parallel/parallel.json"))
    assert len(sets) == 1
    runs = json.loads(sets[0].read_text())["runs"]
    records = [json.loads((Path(r["run_dir"]) / "evidence.json").read_text()) for r in runs]
    assert len({r["run_dir"] for r in records}) == 3
    for run, record in zip(runs, records):
        port, npus, hccl = _slot_of(record)  # what the server was started with: command.sh says it too
        assert (port, npus, int(hccl)) == (run["slot"]["port"], ",".join(map(str, run["slot"]["npus"])),
                                          run["slot"]["hccl_base_port"])
        assert f"export ASCEND_RT_VISIBLE_DEVICES={npus}" in (Path(record["run_dir"]) / "command.sh").read_text()
    by_slot = {run["slot"]["index"]: _slot_of(record) for run, record in zip(runs, records)}
    (port0, npus0, hccl0), (port1, npus1, hccl1) = by_slot[0], by_slot[1]
    assert port0 != port1 and not set(npus0.split(",")) & set(npus1.split(","))
    assert abs(int(hccl0) - int(hccl1)) >= 32 and 60000 not in (int(hccl0), int(hccl1))  # never HCCL's default range
    capacity = json.loads((bench.runs / model.name / "capacity.json").read_text())
    assert [c["verdict"] for c in capacity["cells"]] == ["PASS"] * 3
    assert result.stdout.index("[set] started") < result.stdout.index("== capacity cell max-num-seqs 16")


def test_ctrl_c_stops_every_run_of_a_parallel_set_and_keeps_each_ones_evidence(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-interrupted")
    env = bench.env("v0.11-qwen3-30b-a3b", REPLAY_SPEED="0.2")  # starts of ~15 s: time to press Ctrl-C
    process = subprocess.Popen(["make", "-s", "all-features", f"MODEL={model}", "TP=4"], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        live: list = []
        while time.monotonic() < deadline and len(live) < 2:
            live = [r for _, r in serve.recorded_servers(bench.runs) if r.is_alive_and_ours()]
            time.sleep(0.2)
        assert len(live) == 2, "Stage B and flashcomm1 never ran at once"
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # the helper exits 130; make, which got the SIGINT too, says so and dies of the signal itself
    assert process.returncode in (2, -signal.SIGINT) and "Error 130" in output, output
    assert not [r for _, r in serve.recorded_servers(bench.runs) if r.verified_members()]
    for record in live:
        evidence = json.loads((Path(record.run_dir) / "evidence.json").read_text())
        assert evidence["verdict"] == "INTERRUPTED" and (Path(record.run_dir) / "serve.log").is_file()
    parallel = json.loads(next((bench.runs / model.name).glob("*-parallel/parallel.json")).read_text())
    assert parallel["interrupted"] is True and {r["verdict"] for r in parallel["runs"]} == {"INTERRUPTED"}
    assert "isolation" not in output  # nothing is started after Ctrl-C
