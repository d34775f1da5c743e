"""Verdicts a reviewer can trust, through `make` on the replay backend (issue 19): sign-off only for
what was proven (one rule in status, matrix, report), feature states that say what the log shows,
`next:` lines that move forward and paste, and a stalled start with its last line and next step.

Each test runs make targets as a user does, on a tiny checkpoint shaped like the scenario's model;
the replay server plays recorded real vllm-ascend logs (helpers/replay/scenarios). Every test
checks that no server it started is left (the shared autouse fixture of test_replay_checklist).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from conftest import REPO
from test_replay_checklist import bench, failed_with, nothing_left_behind  # noqa: F401 (fixtures)


def next_line(output: str) -> str:
    lines = [line.strip()[len("next: "):] for line in output.splitlines() if line.strip().startswith("next: ")]
    assert lines, output
    return lines[-1]


def follow(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Paste a printed `next:` command into a shell, as a user would."""
    return subprocess.run(["bash", "-c", command.replace("make ", "make -s ", 1)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=240)


def report_and_matrix(bench, env, model, *variables):
    report = bench.make("report", env, model, *variables)
    matrix = json.loads((bench.runs / model.name / "matrix.json").read_text())
    return report, matrix


def test_an_eager_only_pass_signs_off_only_when_that_fallback_is_accepted(bench):
    model = bench.checkpoint("qwen3-moe-256k", "Qwen3-30B-A3B-eager-only")
    env = bench.env("v0.20-stream-exhaustion")
    assert failed_with(bench.make("stage-b", env, model), 1)  # graph capture dies: stream exhaustion
    eager = bench.passes("eager", env, model)
    assert eager["verdict"] == "PASS" and eager["stage"] == "b"
    # not accepted: status, matrix and report refuse alike, naming the variable that would accept it
    status = bench.make("status", env, model)
    assert "sign-off: not yet" in status.stdout and "ACCEPT_FALLBACK=eager" in status.stdout, status.stdout
    report, matrix = report_and_matrix(bench, env, model)
    assert failed_with(report, 1) and "report: NOT signed off" in report.stdout
    assert matrix["sign_off"]["ok"] is False and "fallback mode (eager)" in matrix["sign_off"]["missing"]
    # the matrix shows what ran: graph mode FAIL with the capture crash, eager PASS, each with its run
    graph, eager_cell = matrix["features"]["aclgraph"], matrix["features"]["eager"]
    assert graph["status"] == "FAIL" and "AclmdlRICaptureBegin" in graph["evidence_line"]
    stage_b = bench.evidence(model, "stage-b")
    assert graph["decided_by"]["run_dir"] == stage_b["run_dir"] and graph["line_no"] == stage_b["root_cause"]["line_no"]
    assert eager_cell["status"] == "PASS" and eager_cell["decided_by"]["run_dir"] == eager["run_dir"]
    # accepted (and the capacity quality gate answered with a recorded reason): every output signs
    # off in that mode, documents it and names what it gave up
    assert bench.make("capacity", env, model, "CAPACITY_NOT_FEASIBLE=replayed box").returncode == 0
    accept = "ACCEPT_FALLBACK=eager"
    report, matrix = report_and_matrix(bench, env, model, accept)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "signed off in the accepted fallback mode eager" in report.stdout and "aclgraph FAIL" in report.stdout
    assert matrix["sign_off"]["ok"] is True and matrix["sign_off"]["mode"] == "eager"
    text = (bench.runs / model.name / "deliverables" / "report.zh.md").read_text(encoding="utf-8")
    assert "验收模式：已接受的回退模式 `eager`" in text and "AclmdlRICaptureBegin" in text
    runbook = (bench.runs / model.name / "deliverables" / "runbook.zh.md").read_text(encoding="utf-8")
    assert "--enforce-eager" in runbook
    status = bench.make("status", env, model, accept)
    assert "sign-off: possible: signed off in the accepted fallback mode eager" in status.stdout, status.stdout


def test_text_only_isolation_never_signs_off(bench):
    model = bench.checkpoint("minicpmv", "MiniCPM-V-text-only")
    env = bench.env("v0.23-vl-minicpmv")
    assert bench.passes("text-only", env, model)["verdict"] == "PASS"
    report, matrix = report_and_matrix(bench, env, model)
    assert failed_with(report, 1) and "an isolation run never signs off" in report.stderr
    assert matrix["sign_off"]["ok"] is False
    status = bench.make("status", env, model)
    assert "sign-off: not yet" in status.stdout and "isolation run never signs off" in status.stdout
    # it cannot be accepted either: a clear one-line refusal (bad input)
    refused = bench.make("report", env, model, "ACCEPT_FALLBACK=text-only")
    assert failed_with(refused, 2) and "never signs off" in refused.stderr and "Traceback" not in refused.stderr


def test_flashcomm1_accepted_without_a_runtime_line_is_not_pass_anywhere(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-accepted")
    env = bench.env("v0.13-qwen3-30b-a3b")
    result = bench.make("flashcomm1", env, model)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ACCEPTED flashcomm1" in result.stdout and "PASS flashcomm1" not in result.stdout
    record = bench.evidence(model, "flashcomm1")
    assert (record["verdict"], record["category"]) == ("ACCEPTED", "accepted-no-evidence")
    assert bench.passes("stage-b", env, model)["verdict"] == "PASS"
    report, matrix = report_and_matrix(bench, env, model)
    assert failed_with(report, 1) and "no capacity result" in report.stderr  # workflow item 104
    assert bench.make("capacity", env, model, "CAPACITY_NOT_FEASIBLE=replayed box").returncode == 0
    report, matrix = report_and_matrix(bench, env, model)
    cell = matrix["features"]["flashcomm1"]
    assert (cell["status"], cell["category4"]) == ("ACCEPTED", "accepted-unverified")
    # the documented command is the proven Stage B, not the unproven flashcomm1 run
    assert report.returncode == 0 and matrix["sign_off"]["run_dir"] == bench.evidence(model, "stage-b")["run_dir"]
    text = (bench.runs / model.name / "deliverables" / "report.zh.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| flashcomm1 |"))
    assert "已接受" in row and "支持且已验证" not in row


def test_flashcomm1_at_tp1_is_refused_without_a_start(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-tp1")
    result = bench.make("flashcomm1", bench.env("v0.13-qwen3-30b-a3b"), model, "TP=1")
    assert failed_with(result, 1) and "no server started" in result.stdout
    record = bench.evidence(model, "flashcomm1")
    assert (record["verdict"], record["category"], record["server_started"]) == ("FAIL", "predicted-refusal", False)
    assert "flashcomm1-tp-requirement" in record["reason"] and "TP=2 or more" in record["reason"]


def test_following_next_on_stream_exhaustion_moves_to_another_remedy_without_a_repeated_flag(bench):
    model = bench.checkpoint("qwen3-moe-256k", "Qwen3-30B-A3B-next")
    env = bench.env("v0.20-stream-exhaustion")
    given = [f"RUNS_DIR={env.pop('RUNS_DIR')}", f"REPLAY_SCENARIO={env.pop('REPLAY_SCENARIO')}"]
    result = bench.make("stage-a", env, model, *given)
    assert failed_with(result, 1)
    commands = [next_line(result.stdout)]
    for _ in range(2):
        # the variables given on the command line come along; the run's own env is not asked again
        assert all(variable in commands[-1] for variable in given), commands[-1]
        assert "HCCL_OP_EXPANSION_MODE" not in commands[-1]
        assert commands[-1].count("--compilation-config") <= 1, commands[-1]
        assert "stage-b" not in commands[-1] and ("make stage-a" in commands[-1] or "STAGE=a" in commands[-1])
        followed = follow(commands[-1], env)
        assert failed_with(followed, 1), followed.stdout + followed.stderr
        commands.append(next_line(followed.stdout))
    assert len(set(commands)) == 3, commands
    assert "FULL_DECODE_ONLY" in commands[0] and "cudagraph_capture_sizes" in commands[1]
    assert commands[2].startswith("make eager") and "STAGE=a" in commands[2]


def test_a_stalled_start_shows_its_last_line_and_a_next_step_and_diagnose_fails(bench):
    model = bench.checkpoint("qwen3-moe", "Qwen3-30B-A3B-stall")
    result = bench.make("stage-a", bench.env("v0.11-hccl-init-hang", STALL_TIMEOUT="2"), model)
    assert failed_with(result, 1)
    record = bench.evidence(model, "stage-a")
    assert record["category"] == "stalled"
    assert "is assigned as DP rank 0" in record["last_line"]["text"]
    assert re.search(r"last line \(serve.log line \d+\): .*in world size 4 is assigned", result.stdout), result.stdout
    assert "phase: HCCL initialisation" in result.stdout
    assert "HCCL_IF_IP" in result.stdout and "next: make hygiene" in result.stdout
    log = Path(record["run_dir"]) / "serve.log"
    diagnosed = bench.make("diagnose", bench.env("v0.11-hccl-init-hang"), model, f"LOG={log}")
    assert failed_with(diagnosed, 1), diagnosed.stdout + diagnosed.stderr
    assert "last line:" in diagnosed.stdout and "HCCL initialisation" in diagnosed.stdout
    assert "next rung:  hccl: make hygiene" in diagnosed.stdout


def test_an_oom_after_the_weights_loaded_gets_the_memory_budget_advice_and_moves_on(bench):
    """The profile run after the weights sizes the KV cache from --gpu-memory-utilization: the
    advice lowers that budget (GPU_MEMORY_UTILIZATION), never MAX_MODEL_LEN, and lowers it again."""
    model = bench.checkpoint("qwen3-dense", "Qwen3-8B-kv-oom")
    env = bench.env("v0.11-oom-startup")
    result = bench.make("stage-a", env, model)
    assert failed_with(result, 1)
    assert "phase: KV-cache allocation" in result.stdout and "memory budget" in result.stdout
    first = next_line(result.stdout)
    assert first.startswith("GPU_MEMORY_UTILIZATION=0.85 make stage-a") and "MAX_MODEL_LEN" not in first
    followed = follow(first, env)
    assert failed_with(followed, 1)  # the recorded box has no more memory: it fails again
    argv = bench.evidence(model, "stage-a")["command"]["argv"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.85"
    assert next_line(followed.stdout).startswith("GPU_MEMORY_UTILIZATION=0.8 make stage-a")
