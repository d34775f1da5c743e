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
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    matrix = json.loads((bench.runs / model.name / "matrix.json").read_text())
    features = matrix["features"]
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
